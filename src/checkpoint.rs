//! Signed checkpoints of the audit chain's head: the external anchor that
//! makes deleting the newest records detectable. The chain alone cannot
//! tell: what is left after a truncation is still an intact chain.
//!
//! `serve` signs `{seq, hash, ts}` of the head with an Ed25519 key and
//! writes it outside `state_dir` (or POSTs it); `audit verify --checkpoints`
//! checks each signature and that the chain still holds that record. This
//! module never writes the audit log and never logs or records a key.
//!
//! Formats, all one line of lowercase hex followed by a newline:
//! - `audit.key`: the 32-byte Ed25519 secret key (the seed of RFC 8032),
//!   mode 0600;
//! - `audit.pub`: the 32-byte Ed25519 public key;
//! - a checkpoint file `checkpoint-<seq>.json`:
//!   `{"seq":N,"hash":"<64 hex>","ts":"<RFC 3339>","signature":"<128 hex>"}`.
//!
//! What is signed ([`Checkpoint::message`]): the bytes of
//! `pitcrew audit checkpoint v1\n` followed by the canonical JSON of
//! `{"hash":…,"seq":…,"ts":…}` (keys sorted, no whitespace), where `seq`,
//! `hash` and `ts` are the head record's own. The prefix keeps a signature
//! made for a checkpoint from meaning anything else.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::audit::{Record, canonical_json};
use crate::config::{CheckpointConfig, CheckpointSink};
use crate::store::{AuditFilter, Store, StoreError};

/// The private key's file name in the directory `audit keygen` writes.
pub const KEY_FILE: &str = "audit.key";
/// The public key's file name beside it.
pub const PUB_FILE: &str = "audit.pub";

/// Domain separation: what a checkpoint signature is about.
const CONTEXT: &[u8] = b"pitcrew audit checkpoint v1\n";

/// How long one POST of a checkpoint may take.
const POST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Something about keys or checkpoints could not be done.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// `keygen` found a key file already there. Keys are never overwritten:
    /// the checkpoints signed with the old one could no longer be checked.
    #[error("{} already exists; refusing to overwrite a key (checkpoints signed with it could no longer be verified)", path.display())]
    KeyExists { path: PathBuf },
    /// The operating system gave no random bytes for a new key.
    #[error("cannot get random bytes for a new key")]
    Random(#[source] getrandom::Error),
    /// A key file does not hold one line of 64 hex characters (32 bytes),
    /// or the public key is not a valid curve point.
    #[error("{} is not an Ed25519 key: expected one line of 64 hex characters", path.display())]
    BadKey { path: PathBuf },
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The chain's head could not be read from the store.
    #[error("cannot read the audit chain")]
    Store(#[from] StoreError),
    /// A checkpoint could not be POSTed (connection, timeout or a non-2xx
    /// answer); the URL is left out, as it may carry a credential.
    #[error("cannot post the checkpoint: {0}")]
    Post(String),
}

impl CheckpointError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CheckpointError::KeyExists { .. } => "key_exists",
            CheckpointError::Random(_) => "random",
            CheckpointError::BadKey { .. } => "bad_key",
            CheckpointError::Io { .. } => "io",
            CheckpointError::Store(_) => "store",
            CheckpointError::Post(_) => "post",
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { action, path, source }
}

/// The chain's head at some moment: the record's own seq, hash and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub ts: String,
}

impl Checkpoint {
    pub fn of(record: &Record) -> Checkpoint {
        Checkpoint {
            seq: record.seq,
            hash: record.hash.clone(),
            ts: record.ts.clone(),
        }
    }

    /// Exactly the bytes that are signed (see the module's doc).
    pub fn message(&self) -> Vec<u8> {
        let mut out = CONTEXT.to_vec();
        out.extend_from_slice(canonical_json(&json!({"hash": self.hash, "seq": self.seq, "ts": self.ts})).as_bytes());
        out
    }

    pub fn sign(&self, key: &SigningKey) -> Signed {
        Signed {
            seq: self.seq,
            hash: self.hash.clone(),
            ts: self.ts.clone(),
            signature: hex::encode(key.sign(&self.message()).to_bytes()),
        }
    }

    /// `checkpoint-<seq>.json`.
    pub fn file_name(&self) -> String {
        format!("checkpoint-{}.json", self.seq)
    }
}

/// A checkpoint with its signature, as written to a file or POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    pub signature: String,
}

impl Signed {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            hash: self.hash.clone(),
            ts: self.ts.clone(),
        }
    }

    /// Whether the signature is `key`'s over this checkpoint. Strict
    /// verification: no malleable or small-order signatures.
    pub fn verifies(&self, key: &VerifyingKey) -> bool {
        let mut bytes = [0u8; 64];
        if hex::decode_to_slice(&self.signature, &mut bytes).is_err() {
            return false;
        }
        key.verify_strict(&self.checkpoint().message(), &Signature::from_bytes(&bytes))
            .is_ok()
    }

    /// One line of JSON and a newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a checkpoint serialises");
        line.push('\n');
        line
    }
}

/// Writes a new key pair to `dir/audit.key` (mode 0600 from its creation:
/// it is never readable by others, not even for a moment) and
/// `dir/audit.pub`. Refuses when either file exists. Returns both paths.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), CheckpointError> {
    let key_path = dir.join(KEY_FILE);
    let pub_path = dir.join(PUB_FILE);
    for path in [&key_path, &pub_path] {
        // symlink_metadata: a dangling symlink in the key's place counts too.
        if path.symlink_metadata().is_ok() {
            return Err(CheckpointError::KeyExists { path: path.clone() });
        }
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(CheckpointError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let secret = Zeroizing::new(format!("{}\n", hex::encode(&seed[..])));
    write_new(&key_path, 0o600, secret.as_bytes())?;
    let public = format!("{}\n", hex::encode(key.verifying_key().as_bytes()));
    if let Err(e) = write_new(&pub_path, 0o644, public.as_bytes()) {
        // A private key without its public half is of no use; do not leave it.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    sync_dir(dir)?;
    Ok((key_path, pub_path))
}

/// Creates `path` with `mode` (O_EXCL: never over an existing file or
/// symlink) and writes `bytes` durably.
fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => CheckpointError::KeyExists { path: path.to_path_buf() },
            _ => CheckpointError::Io {
                action: "create",
                path: path.to_path_buf(),
                source,
            },
        })?;
    file.write_all(bytes).map_err(io("write", path))?;
    file.sync_all().map_err(io("sync", path))
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync", dir))
}

/// Reads 32 bytes written as one line of hex.
fn read_hex32(path: &Path) -> Result<Zeroizing<[u8; 32]>, CheckpointError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io("read", path))?);
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut bytes[..]).map_err(|_| CheckpointError::BadKey { path: path.to_path_buf() })?;
    Ok(bytes)
}

/// Reads `audit.key`. Only `serve` calls this. A key others may read is
/// used (a mounted secret is often 0644) but warned about.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, CheckpointError> {
    let seed = read_hex32(path)?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "audit key file is readable by others; chmod 600 it");
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads `audit.pub`.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, CheckpointError> {
    let bytes = read_hex32(path)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| CheckpointError::BadKey { path: path.to_path_buf() })
}

/// Writes `checkpoint-<seq>.json` into `dir` atomically: a temp file,
/// fsynced, renamed into place, then the directory fsynced, so a crash
/// leaves the old set or the new one, never a torn file.
pub fn write_to_dir(dir: &Path, signed: &Signed) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let name = signed.checkpoint().file_name();
    let path = dir.join(&name);
    // The pid keeps two processes writing the same seq from sharing a temp file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(signed.to_line().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(source) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(CheckpointError::Io {
            action: "write",
            path,
            source,
        });
    }
    sync_dir(dir)?;
    Ok(path)
}

/// Writes a checkpoint of the chain's head whenever it moved.
pub struct Checkpointer {
    store: Arc<dyn Store>,
    key: SigningKey,
    sink: Sink,
    /// The last checkpoint written; one tick at a time.
    last: tokio::sync::Mutex<Option<Checkpoint>>,
}

enum Sink {
    Dir(PathBuf),
    Url { client: reqwest::Client, url: String },
}

impl Checkpointer {
    /// Reads the private key named in the config.
    pub fn from_config(config: &CheckpointConfig, store: Arc<dyn Store>) -> Result<Checkpointer, CheckpointError> {
        let key = read_signing_key(&config.key_file)?;
        let sink = match &config.sink {
            CheckpointSink::Dir(dir) => Sink::Dir(dir.clone()),
            CheckpointSink::Url(url) => Sink::Url {
                client: reqwest::Client::builder()
                    .timeout(POST_TIMEOUT)
                    .build()
                    .map_err(|e| CheckpointError::Post(crate::redact::without_url(&e)))?,
                url: url.clone(),
            },
        };
        Ok(Checkpointer {
            store,
            key,
            sink,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// Writes a checkpoint to `dir` with `key`; for tests and tools.
    pub fn to_dir(store: Arc<dyn Store>, key: SigningKey, dir: PathBuf) -> Checkpointer {
        Checkpointer {
            store,
            key,
            sink: Sink::Dir(dir),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Checkpoints the head if it moved since the last checkpoint written;
    /// returns the new one. A failed write is not remembered, so the next
    /// tick tries again (with the head as it is then).
    pub async fn tick(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut last = self.last.lock().await;
        let Some(head) = self.head(last.as_ref()).await? else {
            return Ok(None);
        };
        let checkpoint = Checkpoint::of(&head);
        if last.as_ref() == Some(&checkpoint) {
            return Ok(None);
        }
        let signed = checkpoint.sign(&self.key);
        match &self.sink {
            Sink::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || write_to_dir(&dir, &signed))
                    .await
                    .expect("checkpoint writer does not panic")?;
            }
            Sink::Url { client, url } => {
                let response = client
                    .post(url)
                    .json(&signed)
                    .send()
                    .await
                    .map_err(|e| CheckpointError::Post(crate::redact::without_url(&e)))?;
                if !response.status().is_success() {
                    return Err(CheckpointError::Post(format!("answered {}", response.status())));
                }
            }
        }
        tracing::debug!(seq = checkpoint.seq, "audit checkpoint written");
        *last = Some(checkpoint.clone());
        Ok(Some(checkpoint))
    }

    /// The newest record. Looked for in growing windows back from now
    /// rather than by reading the whole log: records are in time order, so
    /// the head is almost always in the last second (`serve` writes one at
    /// start-up), and a window never reaches further back than needed.
    async fn head(&self, last: Option<&Checkpoint>) -> Result<Option<Record>, StoreError> {
        let now = self.store.now();
        let since_last = last.and_then(|c| DateTime::parse_from_rfc3339(&c.ts).ok()).map(|t| t.to_utc());
        for back in [1, 60, 3600, 86_400] {
            let since = now - chrono::Duration::seconds(back);
            if since_last.is_some_and(|t| t >= since) {
                break;
            }
            let mut records = self.store.audit(since_filter(Some(since))).await?;
            if let Some(head) = records.pop() {
                return Ok(Some(head));
            }
        }
        // Nothing that recent: since the last checkpoint (which holds at least
        // its own record), or, for a quiet log on the first tick, all of it.
        Ok(self.store.audit(since_filter(since_last)).await?.pop())
    }

    /// Ticks every `every` until `stop`; failures are logged and retried at
    /// the next tick, never passed on (checkpoints never hold up intake).
    pub async fn run(self: Arc<Self>, every: std::time::Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Replicas sharing a store: one signs at a time.
            if !self.store.lead_chores().await {
                continue;
            }
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %crate::diag::chain(&e), kind = e.kind(), "audit checkpoint not written; trying again next interval");
            }
        }
    }
}

fn since_filter(since: Option<DateTime<Utc>>) -> AuditFilter {
    AuditFilter {
        since,
        ..AuditFilter::default()
    }
}

/// Why a checkpoint does not vouch for the chain as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The file is not a checkpoint (not JSON of the expected shape).
    Unreadable { file: String, reason: String },
    /// The file's name says another seq than its (signed) content.
    Misnamed { file: String, seq: u64 },
    /// The signature is not the public key's over the file's content.
    BadSignature { file: String },
    /// The checkpoint names a record past the chain's end: newest records
    /// were deleted.
    Truncated { file: String, seq: u64, end: u64 },
    /// The record at the checkpoint's seq has another hash: it, or one
    /// before it, was changed and the chain rehashed.
    Rewritten {
        file: String,
        seq: u64,
        signed: String,
        found: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unreadable { file, reason } => write!(f, "{file} is not a checkpoint: {reason}"),
            Problem::Misnamed { file, seq } => write!(f, "{file} holds the checkpoint of seq {seq}: renamed?"),
            Problem::BadSignature { file } => write!(
                f,
                "bad signature: {file} does not verify with the public key (forged, altered, or signed with another key)"
            ),
            Problem::Truncated { file, seq, end } => {
                write!(f, "tail truncated: {file} says seq {seq} exists, the chain ends at {end}")
            }
            Problem::Rewritten { file, seq, signed, found } => write!(
                f,
                "rewritten at seq {seq}: {file} says its hash is {signed}, the chain has {found} (that record or one before it was changed)"
            ),
        }
    }
}

/// What checking a directory of checkpoints found.
#[derive(Debug, Default)]
pub struct Report {
    /// Checkpoint files looked at.
    pub files: usize,
    /// The newest checkpoint that vouches for the chain: (file, seq).
    pub newest: Option<(String, u64)>,
    pub problems: Vec<Problem>,
}

/// The `checkpoint-<seq>.json` files in `dir`, oldest seq first. Other
/// files (temp files of an interrupted write, notes) are not checkpoints.
pub fn list_dir(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("checkpoint-"))
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Checks every checkpoint in `dir` against `key` and the chain in `store`,
/// which the caller has verified to be intact with `end` records.
pub async fn verify_dir(dir: &Path, key: &VerifyingKey, store: &dyn Store, end: u64) -> Result<Report, CheckpointError> {
    let mut report = Report::default();
    let mut chain = Chain { store, all: None };
    for (named, path) in list_dir(dir)? {
        report.files += 1;
        let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let signed = match serde_json::from_str::<Signed>(&text) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(Problem::Unreadable {
                    file,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if !signed.verifies(key) {
            report.problems.push(Problem::BadSignature { file });
            continue;
        }
        if signed.seq != named {
            report.problems.push(Problem::Misnamed { file, seq: signed.seq });
            continue;
        }
        if signed.seq > end {
            report.problems.push(Problem::Truncated {
                file,
                seq: signed.seq,
                end,
            });
            continue;
        }
        match chain.hash_at(signed.seq, &signed.ts).await? {
            Some(found) if found == signed.hash => {
                if report.newest.as_ref().is_none_or(|(_, seq)| *seq < signed.seq) {
                    report.newest = Some((file, signed.seq));
                }
            }
            found => report.problems.push(Problem::Rewritten {
                file,
                seq: signed.seq,
                signed: signed.hash,
                found: found.unwrap_or_else(|| "no record".into()),
            }),
        }
    }
    Ok(report)
}

/// Reads the hash of a record by seq through the store's time filter.
struct Chain<'a> {
    store: &'a dyn Store,
    /// seq → hash of the whole log, read only if a record is not where its
    /// checkpoint's time says.
    all: Option<HashMap<u64, String>>,
}

impl Chain<'_> {
    async fn hash_at(&mut self, seq: u64, ts: &str) -> Result<Option<String>, StoreError> {
        if let Ok(at) = DateTime::parse_from_rfc3339(ts) {
            let at = Some(at.to_utc());
            let near = self
                .store
                .audit(AuditFilter {
                    since: at,
                    until: at,
                    ..AuditFilter::default()
                })
                .await?;
            if let Some(r) = near.into_iter().find(|r| r.seq == seq) {
                return Ok(Some(r.hash));
            }
        }
        // Its time was changed with it, or the log is out of time order
        // (also only by tampering): read every hash once to be sure.
        if self.all.is_none() {
            let all = self.store.audit(AuditFilter::default()).await?;
            self.all = Some(all.into_iter().map(|r| (r.seq, r.hash)).collect());
        }
        Ok(self.all.as_ref().and_then(|all| all.get(&seq).cloned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            seq: 42,
            hash: "ab".repeat(32),
            ts: "2026-11-27T12:00:00.000001Z".into(),
        }
    }

    #[test]
    fn the_signed_message_is_the_context_and_canonical_json() {
        assert_eq!(
            String::from_utf8(checkpoint().message()).unwrap(),
            format!(
                "pitcrew audit checkpoint v1\n{{\"hash\":\"{}\",\"seq\":42,\"ts\":\"2026-11-27T12:00:00.000001Z\"}}",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_signature_covers_every_field() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let signed = checkpoint().sign(&key);
        assert!(signed.verifies(&key.verifying_key()));
        let line = signed.to_line();
        assert_eq!(serde_json::from_str::<Signed>(&line).unwrap(), signed);
        assert!(line.starts_with("{\"seq\":42,\"hash\":\""), "{line}");

        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!signed.verifies(&other.verifying_key()));
        for change in [
            |s: &mut Signed| s.seq += 1,
            |s: &mut Signed| s.hash = "cd".repeat(32),
            |s: &mut Signed| s.ts = "2026-11-27T12:00:00.000002Z".into(),
            |s: &mut Signed| s.signature = "00".repeat(64),
            |s: &mut Signed| s.signature = "not hex".into(),
        ] {
            let mut forged = signed.clone();
            change(&mut forged);
            assert!(!forged.verifies(&key.verifying_key()), "{forged:?}");
        }
    }

    #[test]
    fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let (key_path, pub_path) = keygen(&keys).unwrap();
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
        let secret = read_signing_key(&key_path).unwrap();
        assert_eq!(read_verifying_key(&pub_path).unwrap(), secret.verifying_key());
        let text = std::fs::read_to_string(&key_path).unwrap();
        assert_eq!(text.len(), 65, "one line of 64 hex characters");

        let err = keygen(&keys).unwrap_err();
        assert!(matches!(err, CheckpointError::KeyExists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&key_path).unwrap(), text, "the old key is kept");
        // The public half alone in the way also refuses, and writes no key.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join(PUB_FILE), "x\n").unwrap();
        assert!(matches!(keygen(&other), Err(CheckpointError::KeyExists { .. })));
        assert!(!other.join(KEY_FILE).exists());
    }

    #[test]
    fn a_bad_key_file_is_named_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        std::fs::write(&path, "secret-looking-but-not-hex\n").unwrap();
        let err = read_signing_key(&path).unwrap_err().to_string();
        assert!(err.contains("audit.key") && !err.contains("secret-looking"), "{err}");
    }

    #[test]
    fn checkpoints_are_written_whole_and_listed_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7u8; 32]);
        for seq in [10, 9, 100] {
            let signed = Checkpoint { seq, ..checkpoint() }.sign(&key);
            let path = write_to_dir(dir.path(), &signed).unwrap();
            assert_eq!(path.file_name().unwrap().to_str().unwrap(), format!("checkpoint-{seq}.json"));
        }
        std::fs::write(dir.path().join(".checkpoint-11.json.1.tmp"), "{").unwrap();
        std::fs::write(dir.path().join("README"), "anchors").unwrap();
        let seqs: Vec<u64> = list_dir(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, [9, 10, 100]);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") && n != ".checkpoint-11.json.1.tmp")
            .collect();
        assert!(names.is_empty(), "no temp files left behind: {names:?}");
    }
}
