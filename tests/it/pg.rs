//! A real, throw-away PostgreSQL for integration tests: one cluster per test
//! binary ([`cluster`]) with a fresh database per test
//! ([`PgCluster::database`]), or a private cluster ([`PgCluster::new`]) for a
//! test that stops or restarts the server (doing that to the shared one
//! would cut off every other test using it at the time).
//!
//! The server binaries come from Debian's `postgresql` package (the newest
//! `/usr/lib/postgresql/*/bin`, or `PITCREW_TEST_PG_BIN`); `scripts/test.sh`
//! installs it. A missing binary is a loud failure, never a skip.
//!
//! Over TCP the role `pitcrew` must log in with its password
//! (scram-sha-256); the harness administers through the unix socket in the
//! cluster's folder, where the superuser `postgres` is trusted.
//!
//! Cleanup, whichever way the test process ends:
//! - the postmaster has a parent-death signal (SIGINT: fast shutdown), so it
//!   goes down with the test process, even on SIGKILL;
//! - a small `sh` reaper waits on a pipe only the test process holds open;
//!   when it closes (drop, exit, panic, kill) the reaper waits for the
//!   postmaster to be gone and removes the cluster's folder.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, chown, geteuid};

/// The role tests connect as; it owns every database from `database()`.
pub const USER: &str = "pitcrew";
/// Its password, also in [`PgCluster::password_file`].
pub const PASSWORD: &str = "pitcrew-test";
/// The superuser, reachable only through the unix socket.
const ADMIN: &str = "postgres";
/// The OS user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";

/// How long a start (crash recovery included) or a stop may take.
const WITHIN: Duration = Duration::from_secs(60);
/// Between readiness probes.
const PROBE_EVERY: Duration = Duration::from_millis(20);
/// Fresh ports to try when another process takes ours before the server binds it.
const PORT_ATTEMPTS: usize = 5;

/// Small and quick to start, but durable the way production is: fsync,
/// synchronous commit and full-page writes stay on so that a test of what
/// survives a crash or restart means something.
const SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=on",
    "synchronous_commit=on",
    "full_page_writes=on",
    "shared_buffers=16MB",
    "max_connections=200",
    // Compiling a plan takes longer than running any test's query.
    "jit=off",
    "log_line_prefix=%m [%p] ",
];

/// The cluster shared by every test in this binary, started on first use.
pub fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(PgCluster::new)
}

pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Run the server as `postgres`: initdb refuses root.
    as_os_user: bool,
    postmaster: Mutex<Option<Child>>,
    databases: AtomicU32,
    /// Closing it (drop, exit, kill) tells the reaper to clean up.
    reaper_pipe: Option<ChildStdin>,
    reaper: Child,
    /// How long initdb and the first start took.
    pub initdb_took: Duration,
    pub start_took: Duration,
}

impl Default for PgCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl PgCluster {
    /// A private cluster (initdb, start, the `pitcrew` role), stopped and
    /// removed on drop.
    pub fn new() -> PgCluster {
        let bin = bin_dir();
        let as_os_user = geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("pitcrew-pg-")
            .tempdir()
            .expect("temp dir for a PostgreSQL cluster")
            .keep();
        // Before anything can fail, so that a panic below still removes the folder.
        let (reaper, reaper_pipe) = spawn_reaper(&dir);
        if as_os_user {
            let user = User::from_name(OS_USER)
                .expect("look up the postgres OS user")
                .unwrap_or_else(|| panic!("no `{OS_USER}` OS user; install it: apt-get install -y postgresql"));
            chown(&dir, Some(user.uid), Some(user.gid)).unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
        }
        let mut password = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("password"))
            .expect("create the password file");
        password.write_all(PASSWORD.as_bytes()).expect("write the password file");

        let started = Instant::now();
        let mut initdb = as_server_user(as_os_user, &bin.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(dir.join("data"))
            .args(["--username", ADMIN, "--encoding=UTF8", "--locale=C", "--auth=trust"])
            // Skips flushing initdb's files, which only matters if the
            // machine crashes, and then this cluster is gone anyway; the
            // server itself keeps fsync on.
            .args(["--no-sync", "--no-instructions"]);
        let out = run(initdb, &dir);
        assert!(out.status.success(), "initdb failed ({}):\n{}", out.status, both(&out));
        let initdb_took = started.elapsed();
        // Written whole rather than patched: what initdb generates differs by version.
        std::fs::write(
            dir.join("data/pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("write pg_hba.conf");

        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            as_os_user,
            postmaster: Mutex::new(None),
            databases: AtomicU32::new(0),
            reaper_pipe: Some(reaper_pipe),
            reaper,
            initdb_took,
            start_took: Duration::ZERO,
        };
        let started = Instant::now();
        cluster.start_on_a_free_port();
        cluster.start_took = started.elapsed();
        cluster.admin("postgres", &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'"));
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's folder: `data/`, `postgres.log`, the socket, `password`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file holding the password of [`USER`] (no trailing newline).
    pub fn password_file(&self) -> PathBuf {
        self.dir.join("password")
    }

    /// A new, empty database owned by [`USER`], named after the calling
    /// test; returns `postgres://pitcrew@127.0.0.1:PORT/NAME` (no password).
    pub fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = database_name(n, std::thread::current().name().unwrap_or(""));
        self.admin("postgres", &format!("CREATE DATABASE \"{name}\" OWNER {USER}"));
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` as the superuser through the unix socket; returns the
    /// unaligned, tuples-only output. Panics if it fails.
    pub fn admin(&self, database: &str, sql: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", ADMIN, "-d", database, "-c", sql]);
        let out = run(psql, &self.dir);
        assert!(out.status.success(), "psql as {ADMIN} on {database}: {sql}\n{}", both(&out));
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// Runs `sql` over TCP at `url` with `password` (none: `PGPASSWORD`
    /// unset), the way a client of the store logs in. `Err` holds psql's
    /// stderr.
    pub fn psql(&self, url: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
        let mut psql = Command::new(self.bin.join("psql"));
        // -w: never prompt, so a missing password is an error, not a hang.
        psql.args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            // Not the user's ~/.pgpass: the password is only what the test gives.
            .env("PGPASSFILE", self.dir.join("no-pgpass"))
            .env("PGCONNECT_TIMEOUT", "10");
        match password {
            Some(p) => psql.env("PGPASSWORD", p),
            None => psql.env_remove("PGPASSWORD"),
        };
        let out = run(psql, &self.dir);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.lock().unwrap().as_ref().map(Child::id)
    }

    /// A clean stop (fast shutdown: open sessions are ended, a checkpoint
    /// is written). Panics if the server is not running.
    pub fn stop(&self) {
        let mut postmaster = self.postmaster.lock().unwrap();
        let child = postmaster.take().expect("stop: PostgreSQL is not running");
        self.shut_down(child);
    }

    /// Starts the same data folder on the same port again. Panics if the
    /// server is already running.
    pub fn start(&self) {
        let mut postmaster = self.postmaster.lock().unwrap();
        assert!(postmaster.is_none(), "start: PostgreSQL is already running");
        let deadline = Instant::now() + WITHIN;
        loop {
            match self.try_start(self.port) {
                Ok(child) => {
                    *postmaster = Some(child);
                    return;
                }
                // Someone's probe for a free port may hold ours for a moment.
                Err(Start::PortTaken(_)) if Instant::now() < deadline => std::thread::sleep(PROBE_EVERY),
                Err(Start::PortTaken(log) | Start::Failed(log)) => {
                    panic!("PostgreSQL did not start again on port {}:\n{log}", self.port)
                }
            }
        }
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    fn start_on_a_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match self.try_start(port) {
                Ok(child) => {
                    self.port = port;
                    *self.postmaster.get_mut().unwrap() = Some(child);
                    return;
                }
                Err(Start::PortTaken(log)) => last = log,
                Err(Start::Failed(log)) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        panic!("PostgreSQL: no free port after {PORT_ATTEMPTS} attempts:\n{last}");
    }

    /// Starts the postmaster and waits until it accepts connections on TCP.
    fn try_start(&self, port: u16) -> Result<Child, Start> {
        let log_path = self.dir.join("postgres.log");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open postgres.log");
        let from = log.seek(SeekFrom::End(0)).expect("seek postgres.log");
        let mut postgres = as_server_user(self.as_os_user, &self.bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&self.dir);
        for setting in SETTINGS {
            postgres.args(["-c", setting]);
        }
        postgres
            .current_dir(&self.dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let mut child = spawn_from_keeper(postgres).unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        let deadline = Instant::now() + WITHIN;
        loop {
            if let Some(status) = child.try_wait().expect("poll postgres") {
                let log = log_since(&log_path, from);
                return Err(if log.contains("Address already in use") {
                    Start::PortTaken(log)
                } else {
                    Start::Failed(format!("postgres exited with {status}:\n{log}"))
                });
            }
            if self.ready(&child, port) {
                return Ok(child);
            }
            if Instant::now() > deadline {
                self.shut_down(child);
                return Err(Start::Failed(format!(
                    "not accepting connections within {WITHIN:?}:\n{}",
                    log_since(&log_path, from)
                )));
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }

    /// Ready as pg_ctl judges it (our postmaster's pid file says so, which
    /// it does only after binding and any crash recovery), then confirmed
    /// over TCP. The pid file first: while a postmaster that lost the port
    /// race is still exiting, pg_isready could be answered by whoever won it.
    fn ready(&self, child: &Child, port: u16) -> bool {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap_or_default();
        let lines: Vec<&str> = pidfile.lines().map(str::trim).collect();
        if lines.first() != Some(&child.id().to_string().as_str()) || lines.get(7) != Some(&"ready") {
            return false;
        }
        let mut probe = Command::new(self.bin.join("pg_isready"));
        probe.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "1"]);
        run(probe, &self.dir).status.success()
    }

    fn shut_down(&self, mut child: Child) {
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        if child.try_wait().expect("poll postgres").is_none() {
            kill(pid, Signal::SIGINT).expect("SIGINT to the postmaster");
        }
        let deadline = Instant::now() + WITHIN;
        while child.try_wait().expect("poll postgres").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("PostgreSQL did not stop within {WITHIN:?}:\n{}", self.log());
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(child) = self.postmaster.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            self.shut_down(child);
        }
        drop(self.reaper_pipe.take());
        // The folder is gone once this returns: a test may check for that.
        let _ = self.reaper.wait();
    }
}

enum Start {
    PortTaken(String),
    Failed(String),
}

/// `PITCREW_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PITCREW_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!("no PostgreSQL server in /usr/lib/postgresql/*/bin; install it: apt-get install -y postgresql"),
    }
}

/// A command for the server binaries: as `postgres` when we are root, and
/// with a parent-death signal either way. setpriv execs (runuser forks and
/// waits, so the signal would reach runuser, not the server) and sets the
/// signal after changing user, which clears it.
fn as_server_user(as_os_user: bool, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    if as_os_user {
        command.args([format!("--reuid={OS_USER}"), format!("--regid={OS_USER}"), "--init-groups".into()]);
    }
    command.args(["--pdeathsig", "INT", "--"]).arg(program);
    command
}

/// Spawns from a thread that lives as long as the test process. The
/// parent-death signal fires when the *thread* that forked the child ends,
/// and each test runs on a thread of its own.
fn spawn_from_keeper(command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (jobs, next) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pg-keeper".into())
            .spawn(move || {
                for (mut command, reply) in next {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the pg-keeper thread");
        jobs
    });
    let (reply, answer) = mpsc::channel();
    keeper.send((command, reply)).expect("pg-keeper thread is alive");
    answer.recv().expect("pg-keeper thread answers")
}

/// Starts the reaper for `dir`: it blocks reading a pipe whose only writer
/// is this process, then (EOF) stops what is left and removes `dir`. It
/// ignores the signals a Ctrl-C or hangup sends the whole process group.
fn spawn_reaper(dir: &Path) -> (Child, ChildStdin) {
    const SCRIPT: &str = r#"
trap '' HUP INT TERM
while read -r _; do :; done
pidfile="$1/data/postmaster.pid"
if [ -f "$pidfile" ]; then
  read -r pid < "$pidfile"
  # Normally the parent-death signal already did this; a panic during
  # startup leaves a postmaster whose Child handle was dropped.
  kill -INT "$pid" 2>/dev/null
  # The postmaster removes its pid file last; an orphaned postmaster can
  # stay a zombie (still "alive" to kill -0) when nobody reaps it.
  tries=0
  while [ -f "$pidfile" ] && kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 1200 ]; do
    sleep 0.05
    tries=$((tries + 1))
  done
fi
rm -rf -- "$1"
"#;
    let mut reaper = Command::new("sh")
        .args(["-c", SCRIPT, "pitcrew-pg-reaper"])
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::piped())
        // Not inherited: a reaper outliving the tests must not hold the
        // runner's output pipe open.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the cluster reaper");
    let pipe = reaper.stdin.take().expect("reaper stdin");
    (reaper, pipe)
}

/// A port nobody listens on right now; the server may lose it to someone
/// else before it binds, which `start_on_a_free_port` retries.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// `t<n>_<test name>`, kept to what needs no quoting in a URL and to
/// PostgreSQL's 63-byte identifiers; the test name makes a leftover
/// database easy to place.
fn database_name(n: u32, test: &str) -> String {
    let slug: String = test
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .collect();
    let mut name = format!("t{n}_");
    let room = 63 - name.len();
    name.push_str(&slug[slug.len().saturating_sub(room)..]);
    name
}

fn run(mut command: Command, cwd: &Path) -> Output {
    // The server user may not be able to enter the test's own cwd.
    command.current_dir(cwd).env("LC_ALL", "C").stdin(Stdio::null());
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()))
}

fn both(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn log_since(path: &Path, from: u64) -> String {
    let mut shown = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut shown);
    }
    shown
}

// The harness's own checks.

fn password() -> String {
    std::fs::read_to_string(cluster().password_file()).expect("read the password file")
}

#[test]
fn two_databases_are_distinct_and_take_only_a_password_login_over_tcp() {
    let pg = cluster();
    eprintln!("cluster: initdb {:?}, first start {:?}", pg.initdb_took, pg.start_took);
    let (a, b) = (pg.database(), pg.database());
    assert_ne!(a, b);
    let prefix = format!("postgres://pitcrew@127.0.0.1:{}/", pg.port());
    assert!(a.starts_with(&prefix) && b.starts_with(&prefix), "{a} {b}");
    assert_eq!(password(), PASSWORD);

    for url in [&a, &b] {
        let name = url.rsplit('/').next().unwrap();
        let who = pg.psql(url, Some(&password()), "SELECT current_database() || ' ' || current_user");
        assert_eq!(who.unwrap_or_else(|e| panic!("{e}\n{}", pg.log())), format!("{name} pitcrew"));

        let refused = pg.psql(url, Some("wrong"), "SELECT 1").unwrap_err();
        assert!(refused.contains("password authentication failed"), "{refused}");
        let refused = pg.psql(url, None, "SELECT 1").unwrap_err();
        assert!(refused.contains("no password supplied"), "{refused}");
    }

    pg.psql(&a, Some(&password()), "CREATE TABLE only_in_a (x int)").unwrap();
    let missing = pg.psql(&b, Some(&password()), "SELECT * FROM only_in_a").unwrap_err();
    assert!(missing.contains("does not exist"), "{missing}");
    assert_eq!(pg.psql(&a, Some(&password()), "SELECT count(*) FROM only_in_a").unwrap(), "0");
}

#[test]
fn stop_start_and_restart_keep_committed_data_on_the_same_port() {
    // Private: stopping the shared cluster would fail other tests.
    let pg = PgCluster::new();
    let url = pg.database();
    let sql = |q: &str| {
        pg.psql(&url, Some(PASSWORD), q)
            .unwrap_or_else(|e| panic!("{q}: {e}\n{}", pg.log()))
    };
    sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1), (2)");

    let first = pg.pid().unwrap();
    pg.stop();
    assert_eq!(pg.pid(), None);
    let down = pg.psql(&url, Some(PASSWORD), "SELECT 1").unwrap_err();
    assert!(down.contains("Connection refused"), "{down}");
    pg.start();
    assert_eq!(sql("SELECT sum(x) FROM kept"), "3");

    sql("INSERT INTO kept VALUES (3)");
    pg.restart();
    assert_ne!(pg.pid().unwrap(), first);
    assert_eq!(sql("SELECT sum(x) FROM kept"), "6");
    assert!(url.contains(&format!(":{}/", pg.port())));

    let dir = pg.dir().to_path_buf();
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Run by the next test in a child process, which it then SIGKILLs.
#[test]
#[ignore = "a helper: run by a_killed_test_process_leaves_no_server_or_folder_behind"]
fn killed_child() {
    if std::env::var_os("PITCREW_PG_KILLED_CHILD").is_none() {
        return;
    }
    let pg = cluster();
    // libtest has already written "test pg::killed_child ... " on this line.
    println!("pg-cluster {} {}", pg.pid().unwrap(), pg.dir().display());
    // Blocks until killed: the parent never writes.
    let _ = std::io::stdin().read(&mut [0]);
}

#[test]
fn a_killed_test_process_leaves_no_server_or_folder_behind() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "pg::killed_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PITCREW_PG_KILLED_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .find_map(|l| Some(l.split_once("pg-cluster ")?.1.to_owned()))
        .expect("the child prints its cluster");
    let (pid, dir) = line.split_once(' ').unwrap();
    let (cmdline, dir) = (format!("/proc/{pid}/cmdline"), PathBuf::from(dir));
    let data = dir.join("data").display().to_string();
    let is_our_postmaster = || std::fs::read_to_string(&cmdline).is_ok_and(|c| c.contains(&data));
    assert!(is_our_postmaster(), "{line}");

    child.kill().unwrap();
    child.wait().unwrap();

    let deadline = Instant::now() + WITHIN;
    while dir.exists() {
        assert!(Instant::now() < deadline, "{} still there", dir.display());
        std::thread::sleep(PROBE_EVERY);
    }
    // A zombie has an empty cmdline; an unrelated process reusing the pid has another.
    assert!(!is_our_postmaster(), "the postmaster outlived its test process");
}
