//! `exec`: run a program with an argv list — never through a shell — with a
//! cleared environment, a timeout and capped output.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::action::{Action, ActionContext, ActionError, DryRun, ParamType, Spec, StaticWith, input, lenient};
use crate::runbook::Risk;
use crate::runbook::template::Tpl;
use crate::units::Duration;

/// Captured output per stream beyond which the rest is dropped.
pub const OUTPUT_CAP: usize = 64 * 1024;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The only PATH a child sees, whatever pitcrew's own is.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

pub struct Exec {
    spec: Spec,
}

impl Default for Exec {
    fn default() -> Self {
        Self::new()
    }
}

impl Exec {
    pub fn new() -> Self {
        let spec = Spec::new(
            "exec",
            "Run a program (argv list, no shell) with a cleared environment, a timeout and capped output",
            Risk::Medium,
            false,
        )
        .required("command", ParamType::StringList, "argv: program then arguments, each one element")
        .param(
            "env",
            ParamType::StringMap,
            "environment variables for the program (nothing else is passed but PATH and LANG)",
        )
        .param("timeout", ParamType::Duration, "kill the program after this long (default 60s)")
        .example("command: [\"/usr/local/bin/flush-cache\", \"--namespace\", \"{{params.namespace}}\"]\ntimeout: 30s\n");
        Exec { spec }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(deserialize_with = "lenient::string_list")]
    command: Vec<String>,
    #[serde(default, deserialize_with = "lenient::string_map")]
    env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "lenient::opt_duration")]
    timeout: Option<Duration>,
}

/// What a finished child left behind.
pub struct Finished {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr: Vec<u8>,
    pub stderr_truncated: bool,
}

/// Runs `command` with exactly `env`, feeding `stdin`, killing it after
/// `timeout`. Shared with plugins: the one place pitcrew starts processes.
pub async fn run_process(
    command: &[String],
    env: &BTreeMap<String, String>,
    cwd: &std::path::Path,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Finished, ActionError> {
    let (program, args) = command.split_first().ok_or_else(|| ActionError::input("command", "is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(cwd)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| ActionError::Failed(format!("cannot start {program:?}: {e}")))?;
    let feed = child.stdin.take().zip(stdin).map(|(mut pipe, bytes)| {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A child that exits without reading its input is not our failure.
            let _ = pipe.write_all(&bytes).await;
        })
    });
    let stdout = tokio::spawn(read_capped(child.stdout.take().expect("stdout is piped")));
    let stderr = tokio::spawn(read_capped(child.stderr.take().expect("stderr is piped")));
    let group = child.id().and_then(|pid| i32::try_from(pid).ok()).map(nix::unistd::Pid::from_raw);
    // The step's own timeout (or a shutdown) drops this future while the
    // program runs: `kill_on_drop` would kill only the program itself, and
    // what it started would live on. Declared after `child`, so it is
    // dropped first, while the leader is not yet reaped and the group id
    // cannot have been reused.
    let mut guard = GroupGuard(group);
    let status = match tokio::time::timeout(timeout.std(), child.wait()).await {
        Ok(status) => {
            // Reaped: the group id may be reused from now on.
            guard.0 = None;
            status.map_err(|e| ActionError::Failed(format!("waiting for {program:?}: {e}")))?
        }
        Err(_) => {
            kill_group(guard.0.take());
            let _ = child.kill().await;
            return Err(ActionError::Timeout(timeout));
        }
    };
    if let Some(feed) = feed {
        feed.abort();
    }
    // A background process it left behind may hold the pipes open: the
    // command is done when it exits; take what output there is.
    let drain = std::time::Duration::from_secs(2);
    let (stdout, stdout_truncated) = tokio::time::timeout(drain, stdout)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((Vec::new(), true));
    let (stderr, stderr_truncated) = tokio::time::timeout(drain, stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((Vec::new(), true));
    Ok(Finished {
        exit_code: status.code(),
        stdout,
        stdout_truncated,
        stderr,
        stderr_truncated,
    })
}

/// SIGKILL to the whole process group a timed-out command started.
/// Kills a process group when dropped, unless disarmed (`None`).
struct GroupGuard(Option<nix::unistd::Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0.take());
    }
}

fn kill_group(group: Option<nix::unistd::Pid>) {
    if let Some(pgid) = group {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Reads everything, keeps the first `OUTPUT_CAP` bytes: the child must not
/// block on a full pipe, and must not fill our memory either.
async fn read_capped(mut stream: impl AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

#[async_trait::async_trait]
impl Action for Exec {
    fn spec(&self) -> &Spec {
        &self.spec
    }

    fn check_templates(&self, with: StaticWith<'_>) -> Vec<(String, String)> {
        let program_literal = match with.get("command") {
            Some(Tpl::List(items)) => items.first().is_none_or(Tpl::is_literal),
            Some(other) => other.is_literal(),
            None => true,
        };
        if program_literal {
            Vec::new()
        } else {
            vec![(
                "command".into(),
                "`command[0]` must be literal: a template there would let alert data choose the program".into(),
            )]
        }
    }

    /// An argument that starts with a template's output and renders to
    /// `-…` would be read as an option (`--all`, `--kubeconfig=…`) unless a
    /// literal `--` ended the options before it.
    fn check_rendered(&self, with: StaticWith<'_>, input: &Value) -> Result<(), ActionError> {
        let (Some(Tpl::List(items)), Some(Value::Array(rendered))) = (with.get("command"), input.get("command")) else {
            return Ok(());
        };
        let options_end = items
            .iter()
            .position(|t| matches!(t, Tpl::Literal(Value::String(s)) if s == "--"))
            .unwrap_or(items.len());
        for (i, (tpl, value)) in items.iter().zip(rendered).enumerate().take(options_end) {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if tpl.starts_with_template() && text.starts_with('-') {
                return Err(ActionError::input(
                    &format!("command[{i}]"),
                    format!("renders to {text:?}, which the program would read as an option; put a literal \"--\" before it in `command`"),
                ));
            }
        }
        Ok(())
    }

    fn dry_run(&self, _input: &Value) -> DryRun {
        DryRun::Skip
    }

    async fn run(&self, input_value: &Value, cx: &ActionContext<'_>) -> Result<Value, ActionError> {
        let Input {
            command,
            env: extra,
            timeout,
        } = input(input_value)?;
        if command.is_empty() || command[0].is_empty() {
            return Err(ActionError::input("command", "needs at least the program"));
        }
        let mut env = BTreeMap::from([
            ("PATH".to_string(), CHILD_PATH.to_string()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
            ("PITCREW_EXECUTION_ID".to_string(), cx.execution_id.to_string()),
        ]);
        env.extend(extra);
        let cwd = cx.artifact_dir()?;
        let done = run_process(&command, &env, &cwd, None, timeout.unwrap_or(DEFAULT_TIMEOUT)).await;
        cx.drop_empty_artifact_dir();
        let done = done?;
        let output = json!({
            "exit_code": done.exit_code,
            "stdout": String::from_utf8_lossy(&done.stdout),
            "stderr": String::from_utf8_lossy(&done.stderr),
            "truncated": done.stdout_truncated || done.stderr_truncated,
        });
        match done.exit_code {
            Some(0) => Ok(output),
            Some(code) => Err(ActionError::Failed(format!(
                "{} exited with code {code}: {}",
                command[0],
                last_line(&done.stderr)
            ))),
            None => Err(ActionError::Failed(format!("{} was killed by a signal", command[0]))),
        }
    }
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect()
}
