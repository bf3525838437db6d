//! StdioFork: a cluster that runs a command per session; the command's standard input and output are the session's
//! byte stream. Its standard error goes to the agent's. The exit status is logged; when the session ends first, the
//! process is killed.

use super::UpstreamError;
use crate::stream::{Reader, Writer};
use std::process::Stdio;
use tokio::process::{Child, ChildStdout, Command};

/// The read half of a forked command: its stdout, and the process itself (killed if dropped while running).
pub struct ProcessReader {
    pub stdout: ChildStdout,
    pub child: Option<Child>,
    pub program: String,
}

impl ProcessReader {
    /// Called at end of stream: waits briefly for the process and logs how it ended.
    pub async fn reap(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        match tokio::time::timeout(std::time::Duration::from_secs(2), child.wait()).await {
            Ok(Ok(status)) if status.success() => tracing::debug!(program = %self.program, "process exited: {status}"),
            Ok(Ok(status)) => tracing::warn!(program = %self.program, "process exited: {status}"),
            Ok(Err(e)) => tracing::warn!(program = %self.program, "cannot wait for process: {e}"),
            Err(_) => {
                tracing::warn!(program = %self.program, "process closed its stdout but did not exit; killing it");
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts `command` (argv) with piped stdin and stdout.
pub fn spawn(command: &[String]) -> Result<(Reader, Writer), UpstreamError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| UpstreamError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command")))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(UpstreamError::Io)?;
    let missing = || UpstreamError::Io(std::io::Error::other("child has no pipe"));
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    tracing::debug!(program = %program, pid = child.id(), "process started");
    Ok((
        Reader::Process(Box::new(ProcessReader {
            stdout,
            child: Some(child),
            program: program.clone(),
        })),
        Writer::Process(Some(stdin)),
    ))
}
