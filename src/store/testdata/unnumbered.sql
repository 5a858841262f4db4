-- The state layout before layouts were numbered (user_version 0), for the upgrade test.
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    dedupe_key TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
DROP INDEX IF EXISTS alerts_fingerprint;
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    actor TEXT NOT NULL,
    alert_id INTEGER REFERENCES alerts(id),
    fingerprint TEXT,
    params TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    automated INTEGER NOT NULL,
    risk TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    admitted_ms INTEGER,
    started_ms INTEGER,
    finished_ms INTEGER,
    approval_deadline_ms INTEGER,
    claimed_by TEXT,
    resume_error TEXT
);
-- Only runs not yet ended: the index stays small however long the history,
-- and a run leaves it when it ends. Queries name `active!()` to use it.
DROP INDEX IF EXISTS executions_state;
DROP INDEX IF EXISTS executions_target;
CREATE INDEX IF NOT EXISTS executions_active ON executions(state, created_ms)
    WHERE state IN ('queued', 'running', 'pending_approval');
CREATE INDEX IF NOT EXISTS executions_runbook_target ON executions(runbook, target, admitted_ms);
CREATE INDEX IF NOT EXISTS executions_admitted ON executions(admitted_ms);
CREATE INDEX IF NOT EXISTS executions_fingerprint ON executions(fingerprint);
CREATE TABLE IF NOT EXISTS steps (
    execution_id TEXT NOT NULL,
    phase TEXT NOT NULL,
    idx INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    idempotent INTEGER NOT NULL,
    state TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT,
    error TEXT,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    PRIMARY KEY (execution_id, phase, idx, attempt)
) WITHOUT ROWID; -- one b-tree, not a table plus its key's index (state dirs made before keep theirs)
-- The last firing alert per target, for the storm brake: one row per target,
-- so counting alerting targets never scans every alert of a storm.
CREATE TABLE IF NOT EXISTS target_alerts (target TEXT PRIMARY KEY, ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS target_alerts_ms ON target_alerts(ms);
CREATE INDEX IF NOT EXISTS executions_runbook_admitted ON executions(runbook, admitted_ms);
CREATE TABLE IF NOT EXISTS notices (kind TEXT NOT NULL, ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS breakers (
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    tripped_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (runbook, target)
);
CREATE TABLE IF NOT EXISTS breaker_resets (
    runbook TEXT NOT NULL,
    target TEXT NOT NULL,
    ms INTEGER NOT NULL,
    PRIMARY KEY (runbook, target)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    execution_id TEXT,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_execution ON audit(execution_id);
CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts_ms);
