//! Files and standard input as a [`super::Source`] (`imipd process FILE|-`,
//! an MTA pipe, procmail, a Sieve `pipe`): each message in the order given,
//! nothing to mark, nothing to wait for.

use std::io::Read;

use crate::shutdown::Shutdown;

use super::{Handler, Incoming, PassReport, SourceError};

/// The messages named on the command line (`-` is standard input).
pub struct FilesSource {
    files: Vec<String>,
}

impl FilesSource {
    pub fn new(files: &[String]) -> FilesSource {
        FilesSource {
            files: files.to_vec(),
        }
    }
}

impl super::Source for FilesSource {
    fn name(&self) -> &str {
        "files"
    }

    async fn pass<H: Handler>(
        &mut self,
        handler: &mut H,
        _stop: &Shutdown,
    ) -> Result<Vec<PassReport>, SourceError> {
        let mut rep = PassReport {
            folder: "files".into(),
            ..PassReport::default()
        };
        for (i, file) in self.files.iter().enumerate() {
            rep.examined += 1;
            let raw = if file == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).map(|_| buf)
            } else {
                std::fs::read(file)
            };
            let outcome = match raw {
                Ok(raw) => {
                    handler
                        .handle(Incoming {
                            raw,
                            source: file.clone(),
                            account: None,
                            folder: None,
                            can_move: false,
                            problems: Vec::new(),
                        })
                        .await
                }
                Err(e) => handler.unreadable(file.clone(), format!("cannot read {file}: {e}")),
            };
            if outcome.imip {
                rep.with_calendar += 1;
            }
            if outcome.failed() {
                rep.failed += 1;
            }
            if outcome.stop {
                // The store or the state cannot be written: the rest would be
                // handled against it as it is, and lost. The MTA retries.
                let rest: Vec<&str> = self.files[i + 1..].iter().map(String::as_str).collect();
                return Err(SourceError::other(if rest.is_empty() {
                    "the store or the state cannot be written".to_string()
                } else {
                    format!(
                        "not handled, because the store or the state cannot be written: {}",
                        rest.join(", ")
                    )
                }));
            }
        }
        Ok(vec![rep])
    }

    async fn wait(&mut self, stop: &Shutdown) -> Result<(), SourceError> {
        stop.wait().await;
        Ok(())
    }

    async fn close(&mut self) {}
}
