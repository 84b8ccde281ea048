#!/usr/bin/env python3
"""A throwaway SMTP receiver for imipd's integration tests (needs aiosmtpd).

Started by tests/it/harness/smtp.rs as a child process on 127.0.0.1. Every
accepted message is written into --out-dir as NNNNNN.json (written to a temp
name, then renamed, so a reader never sees half a file):

    {"seq": 1, "mail_from": "...", "rcpt_to": ["..."], "auth_user": null | "...",
     "tls": false, "mail_options": [...], "rcpt_options": [...],
     "data_b64": "<the message exactly as received after DATA, CRLF line ends>",
     "lmtp_error": null | "..."}

Modes:
  --tls none       plain SMTP, no STARTTLS offered
  --tls starttls   STARTTLS offered and required before MAIL (--cert/--key)
  --tls implicit   TLS from the first byte (SMTPS, --cert/--key)
  --auth-user U --auth-pass P
                   AUTH PLAIN and LOGIN offered (also without TLS) and required;
                   wrong credentials get 535. Without them no AUTH is offered.
  --lmtp-port N [--lmtp-map FROM=TO ...]
                   also deliver each accepted message over LMTP to
                   127.0.0.1:N, to each envelope recipient (or its mapped
                   address), before answering the DATA command, so when the
                   JSON file exists the message is already in the mailbox.
  --parent-pid P   exit when process P is gone (no orphans if the test dies).

While a file named "reject" exists in the folder above --out-dir, every
DATA is answered with its first line (e.g. "451 4.3.0 Try again later")
and nothing is recorded or forwarded: for temporary/permanent failure tests.
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import smtplib
import ssl
import sys
import threading
import time

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--tls", choices=["none", "starttls", "implicit"], default="none")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth-user")
    p.add_argument("--auth-pass")
    p.add_argument("--lmtp-port", type=int)
    p.add_argument("--lmtp-map", action="append", default=[])
    p.add_argument("--parent-pid", type=int)
    return p.parse_args()


class Handler:
    def __init__(self, args):
        self.args = args
        self.out_dir = args.out_dir
        self.lmtp_map = {}
        for item in args.lmtp_map:
            src, _, dst = item.partition("=")
            self.lmtp_map[src.strip().lower()] = dst.strip()
        # Continue numbering after a restart into the same folder.
        self.seq = 0
        for name in os.listdir(self.out_dir):
            if name.endswith(".json") and name[:-5].isdigit():
                self.seq = max(self.seq, int(name[:-5]))

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if not self.args.auth_user:
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    def forward_lmtp(self, mail_from, rcpts, data):
        errors = []
        for rcpt in rcpts:
            target = self.lmtp_map.get(rcpt.lower(), rcpt)
            try:
                # One transaction per recipient: smtplib.LMTP reads only one
                # reply after DATA.
                with smtplib.LMTP("127.0.0.1", self.args.lmtp_port, timeout=30) as lmtp:
                    refused = lmtp.sendmail(mail_from or "", [target], data)
                    if refused:
                        errors.append(f"{target}: {refused!r}")
            except Exception as e:  # noqa: BLE001 - reported in the JSON
                errors.append(f"{target}: {e!r}")
        return "; ".join(errors) or None

    def reject_reply(self):
        path = os.path.join(os.path.dirname(os.path.abspath(self.out_dir)), "reject")
        try:
            with open(path) as f:
                line = f.readline().strip()
        except FileNotFoundError:
            return None
        return line or "451 4.3.0 Rejected by the test"

    async def handle_DATA(self, server, session, envelope):
        reject = self.reject_reply()
        if reject:
            print(f"rejected DATA from {envelope.mail_from}: {reject}", flush=True)
            return reject
        data = envelope.original_content
        if data is None:
            data = envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        lmtp_error = None
        if self.args.lmtp_port:
            lmtp_error = self.forward_lmtp(envelope.mail_from, envelope.rcpt_tos, data)
            if lmtp_error:
                print(f"LMTP forward failed: {lmtp_error}", file=sys.stderr, flush=True)
        auth_user = None
        if session.authenticated:
            ad = session.auth_data
            auth_user = ad.decode() if isinstance(ad, bytes) else ad
        tls = False
        if server.transport is not None:
            tls = server.transport.get_extra_info("ssl_object") is not None
        self.seq += 1
        record = {
            "seq": self.seq,
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "auth_user": auth_user,
            "tls": tls,
            "mail_options": list(envelope.mail_options),
            "rcpt_options": list(envelope.rcpt_options),
            "data_b64": base64.b64encode(data).decode("ascii"),
            "lmtp_error": lmtp_error,
        }
        name = f"{self.seq:06d}.json"
        tmp = os.path.join(self.out_dir, "." + name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.out_dir, name))
        print(f"accepted #{self.seq} from {envelope.mail_from} to {envelope.rcpt_tos}",
              flush=True)
        return "250 2.0.0 Message accepted for delivery"


def make_authenticator(user, password):
    def authenticator(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        pw = auth_data.password.decode("utf-8", "replace")
        if login == user and pw == password:
            return AuthResult(success=True, auth_data=login)
        print(f"AUTH {mechanism} refused for {login!r}", flush=True)
        return AuthResult(success=False, handled=False)  # -> 535 5.7.8

    return authenticator


def watch_parent(pid):
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        time.sleep(0.5)


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    if args.parent_pid:
        threading.Thread(target=watch_parent, args=(args.parent_pid,), daemon=True).start()

    ctx = None
    if args.tls != "none":
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)

    handler = Handler(args)
    kwargs = dict(
        hostname="localhost",
        enable_SMTPUTF8=True,
        data_size_limit=64 * 1024 * 1024,
        timeout=60,
    )
    if args.tls == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True)
    if args.auth_user:
        kwargs.update(
            authenticator=make_authenticator(args.auth_user, args.auth_pass or ""),
            auth_required=True,
            auth_require_tls=False,
        )

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(
            lambda: SMTP(handler, loop=loop, **kwargs),
            host="127.0.0.1",
            port=args.port,
            ssl=ctx if args.tls == "implicit" else None,
            reuse_address=True,
        )
    )
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    print(f"listening on 127.0.0.1:{args.port} tls={args.tls}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    main()
