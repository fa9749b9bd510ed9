"""Numbered migrations of flowfuse.db (control data), runs.db (executions and steps) and audit.db (the audit log).

Every row that belongs to a tenant carries `tenant_id`. Add a migration; never edit one that shipped.
"""

from __future__ import annotations

from sqlite_utils import Migrations

control = Migrations("flowfuse")
runs = Migrations("runs")


@control(name="0001_initial")
def _control_0001(db) -> None:
    db.executescript("""
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        slug TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        created_at REAL NOT NULL
    );
    CREATE TABLE flows (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        trigger_type TEXT NOT NULL,
        webhook_path TEXT,
        webhook_method TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant_id, name)
    );
    CREATE INDEX flows_webhook ON flows (tenant_id, webhook_path) WHERE webhook_path IS NOT NULL;
    CREATE INDEX flows_active ON flows (active, trigger_type);
    CREATE TABLE flow_versions (
        flow_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
        tenant_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (flow_id, version)
    );
    CREATE TABLE credentials (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    CREATE TABLE variables (
        tenant_id TEXT NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    """)


@control(name="0002_identity")
def _control_0002(db) -> None:
    """People, their tenant roles, sessions, API keys, invitations and password resets.

    Users are instance-wide (one person may belong to several tenants); what ties them to a tenant
    is a membership, which carries tenant_id. Secrets (session ids, API keys, invitation and
    reset tokens, recovery codes) are stored only as SHA-256 hashes.
    """
    db.executescript("""
    ALTER TABLE tenants ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        name TEXT NOT NULL DEFAULT '',
        password_hash TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'active',
        totp_secret BLOB,
        mfa_enabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE memberships (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, user_id)
    );
    CREATE INDEX memberships_user ON memberships (user_id);
    CREATE TABLE sessions (
        id_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        mfa_pending INTEGER NOT NULL DEFAULT 0,
        ip TEXT,
        user_agent TEXT,
        created_at REAL NOT NULL,
        last_seen_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX sessions_user ON sessions (user_id);
    CREATE TABLE recovery_codes (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        code_hash TEXT NOT NULL,
        used_at REAL,
        PRIMARY KEY (user_id, code_hash)
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        prefix TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_by TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        last_used_at REAL,
        revoked_at REAL
    );
    CREATE INDEX api_keys_tenant ON api_keys (tenant_id, id);
    CREATE TABLE invitations (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        email TEXT NOT NULL COLLATE NOCASE,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_by TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        accepted_at REAL
    );
    CREATE INDEX invitations_tenant ON invitations (tenant_id, id);
    CREATE TABLE password_resets (
        token_hash TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    """)


@runs(name="0001_initial")
def _runs_0001(db) -> None:
    db.executescript("""
    CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        flow_id TEXT,
        flow_name TEXT NOT NULL,
        flow_version INTEGER,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        input BLOB NOT NULL,
        meta TEXT,
        output BLOB,
        error TEXT,
        parent_id TEXT,
        dedup_key TEXT,
        resume_at REAL,
        owner TEXT,
        created_at REAL NOT NULL,
        finished_at REAL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX executions_dedup ON executions (dedup_key) WHERE dedup_key IS NOT NULL;
    CREATE INDEX executions_tenant ON executions (tenant_id, id);
    CREATE INDEX executions_flow ON executions (tenant_id, flow_id, id);
    CREATE INDEX executions_status ON executions (tenant_id, status, id);
    CREATE INDEX executions_unfinished ON executions (status, owner) WHERE status IN ('queued', 'running', 'waiting');
    CREATE TABLE steps (
        execution_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        tenant_id TEXT NOT NULL,
        key TEXT NOT NULL,
        node TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        input_count INTEGER NOT NULL,
        output BLOB,
        error TEXT,
        resume_at REAL,
        truncated INTEGER NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL,
        PRIMARY KEY (execution_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE resume_payloads (
        execution_id TEXT NOT NULL,
        tenant_id TEXT NOT NULL,
        key TEXT NOT NULL,
        items BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (execution_id, key)
    );
    CREATE TABLE processes (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    CREATE TABLE schedule_state (
        flow_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        last_due REAL NOT NULL
    );
    """)


@runs(name="0002_steps_in_commit_order")
def _runs_0002(db) -> None:
    """Steps stored in commit order, found through an index on (execution_id, seq).

    Clustered by (execution_id, seq), every commit of N concurrent runs wrote N scattered table
    pages (about 4 KB of WAL per step with `engine.checkpoint = every_step`); appended by rowid,
    the rows fill the last page and only the narrower index pages scatter (about 2 KB per step,
    10 % more steps per second on benchmark 2).
    """
    db.executescript("""
    CREATE TABLE steps_new (
        id INTEGER PRIMARY KEY,
        execution_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        tenant_id TEXT NOT NULL,
        key TEXT NOT NULL,
        node TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        input_count INTEGER NOT NULL,
        output BLOB,
        error TEXT,
        resume_at REAL,
        truncated INTEGER NOT NULL DEFAULT 0,
        started_at REAL NOT NULL,
        ended_at REAL NOT NULL
    );
    INSERT INTO steps_new (execution_id, seq, tenant_id, key, node, attempt, status, input_count, output, error,
                           resume_at, truncated, started_at, ended_at)
        SELECT execution_id, seq, tenant_id, key, node, attempt, status, input_count, output, error,
               resume_at, truncated, started_at, ended_at FROM steps ORDER BY execution_id, seq;
    DROP TABLE steps;
    ALTER TABLE steps_new RENAME TO steps;
    CREATE UNIQUE INDEX steps_execution ON steps (execution_id, seq);
    """)


audit = Migrations("audit")


@audit(name="0001_initial")
def _audit_0001(db) -> None:
    """The append-only audit log of audit.db: one hash-chained row per state change or sign-in.

    `seq` is gapless from 1 and `hash` is the SHA-256 of every other column (see appliance.audit),
    so an edited, removed, inserted or reordered row breaks the chain. `at` never decreases with
    `seq`, which lets a time range be looked up as a range of seq (index `entries_at`).
    """
    db.executescript("""
    CREATE TABLE entries (
        seq INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        tenant_id TEXT,
        actor_type TEXT NOT NULL,
        actor_id TEXT,
        actor_label TEXT,
        action TEXT NOT NULL,
        target_type TEXT,
        target_id TEXT,
        ip TEXT,
        user_agent TEXT,
        outcome TEXT NOT NULL DEFAULT 'ok',
        details TEXT NOT NULL DEFAULT '{}',
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX entries_tenant ON entries (tenant_id, seq);
    CREATE INDEX entries_action ON entries (action, seq);
    CREATE INDEX entries_actor ON entries (actor_id, seq);
    CREATE INDEX entries_actor_label ON entries (actor_label, seq);
    CREATE INDEX entries_target ON entries (target_id, seq);
    CREATE INDEX entries_at ON entries (at);
    """)


@control(name="0003_vault_envelope")
def _control_0003(db) -> None:
    """Envelope encryption of credentials (see appliance.vault).

    Each tenant gets a data key wrapped by the master key (`tenant_keys`); `vault_meta` holds the
    signing key, also wrapped by the master key, whose unwrapping proves the master key right.
    Credentials get a stable id that their ciphertext is bound to, so a rename needs no
    re-encryption. The rows of the old format (encrypted under the master key itself) move to
    `credentials_legacy`: no SQL can re-encrypt them, so the vault converts them the first time
    it opens with the right key.
    """
    db.executescript("""
    ALTER TABLE credentials RENAME TO credentials_legacy;
    CREATE TABLE tenant_keys (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        nonce BLOB NOT NULL,
        wrapped BLOB NOT NULL,
        created_at REAL NOT NULL,
        rotated_at REAL
    );
    CREATE TABLE vault_meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    CREATE TABLE credentials (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (tenant_id, name)
    );
    """)


@control(name="0004_totp_last_step")
def _control_0004(db) -> None:
    """The last TOTP time step a person used, so that a code cannot be used twice."""
    db.executescript("ALTER TABLE users ADD COLUMN totp_last_step INTEGER;")


@runs(name="0003_usage")
def _runs_0003(db) -> None:
    """Usage per tenant and UTC day, for transaction pricing and the monthly execution quota.

    In runs.db, beside what it counts: appliance.usage writes it in the same group commit as the
    executions and steps. Kept when old executions are deleted by retention.
    """
    db.executescript("""
    CREATE TABLE usage (
        tenant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        executions INTEGER NOT NULL DEFAULT 0,
        steps INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, day)
    ) WITHOUT ROWID;
    """)


@runs(name="0004_list_and_housekeeping_indexes")
def _runs_0004(db) -> None:
    """Indexes that keep the execution list and housekeeping fast at a million executions.

    - The list filtered by flow and status read the (tenant_id, status, id) index and looked up
      every row to test its flow: a deep page of a quiet flow scanned ~100,000 rows (37 ms p99 in
      SQLite alone, bench 5). `executions_flow_status` seeks straight to the page.
    - SQLite uses a partial index only when the query's WHERE contains the index's own WHERE, and
      `status = 'running'` does not contain `status IN ('queued', 'running', 'waiting')`; so
      cancel_requested, orphans, due_waiting and queued scanned the whole table (0.2-1.2 s each at
      1,000,000 rows, run every 0.2 s by the worker and every 2 s on the web process's event loop).
      One partial index per status replaces `executions_unfinished`, which no query could use.
    """
    db.executescript("""
    CREATE INDEX executions_flow_status ON executions (tenant_id, flow_id, status, id);
    DROP INDEX executions_unfinished;
    CREATE INDEX executions_queued ON executions (id) WHERE status = 'queued';
    CREATE INDEX executions_running ON executions (owner) WHERE status = 'running';
    CREATE INDEX executions_waiting ON executions (resume_at) WHERE status = 'waiting';
    """)


@control(name="0005_pins")
def _control_0005(db) -> None:
    """Pinned output items of flow nodes, for test runs from the console.

    They belong to the flow, not to a version (a pin survives saving a new version), and go with
    the flow and its tenant. `node_id` may name a node of an unsaved draft only.
    """
    db.executescript("""
    CREATE TABLE pins (
        flow_id TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        node_id TEXT NOT NULL,
        items TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (flow_id, node_id)
    );
    """)


@runs(name="0005_debugging")
def _runs_0005(db) -> None:
    """Test runs: where a step's output came from when its node did not run (`origin`: pinned or
    replayed), and the node a step-mode run is paused before (`paused_at`, while it is waiting)."""
    db.executescript("""
    ALTER TABLE steps ADD COLUMN origin TEXT;
    ALTER TABLE executions ADD COLUMN paused_at TEXT;
    """)


# -- issue 4: the dashboard and the flows list (numbered 0006: another change may take 0005) ----------------
@control(name="0006_flow_tags")
def _control_0006(db) -> None:
    """Flow tags (the flow JSON's optional top-level "tags") as rows, so the flows list filters by tag
    through an index at 10,000 flows instead of parsing every definition.

    Triggers keep `flow_tags` in step with `flows` whoever writes it (API, console, CLI, a bulk
    load); flows are never renamed (a new name is a new flow), so (tenant, tag, name) stays true.
    `flows_tenant_active` serves the active-flow count of the quota and the dashboard.
    """
    db.executescript("""
    CREATE TABLE flow_tags (
        tenant_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        name TEXT NOT NULL,
        flow_id TEXT NOT NULL,
        PRIMARY KEY (tenant_id, tag, name)
    ) WITHOUT ROWID;
    CREATE INDEX flow_tags_flow ON flow_tags (flow_id);
    CREATE TRIGGER flow_tags_insert AFTER INSERT ON flows BEGIN
        INSERT OR IGNORE INTO flow_tags (tenant_id, tag, name, flow_id)
            SELECT new.tenant_id, value, new.name, new.id FROM json_each(new.definition, '$.tags') WHERE type = 'text';
    END;
    CREATE TRIGGER flow_tags_update AFTER UPDATE OF definition ON flows BEGIN
        DELETE FROM flow_tags WHERE flow_id = old.id;
        INSERT OR IGNORE INTO flow_tags (tenant_id, tag, name, flow_id)
            SELECT new.tenant_id, value, new.name, new.id FROM json_each(new.definition, '$.tags') WHERE type = 'text';
    END;
    CREATE TRIGGER flow_tags_delete AFTER DELETE ON flows BEGIN
        DELETE FROM flow_tags WHERE flow_id = old.id;
    END;
    INSERT OR IGNORE INTO flow_tags (tenant_id, tag, name, flow_id)
        SELECT f.tenant_id, j.value, f.name, f.id FROM flows f, json_each(f.definition, '$.tags') j WHERE j.type = 'text';
    CREATE INDEX flows_tenant_active ON flows (tenant_id, active);
    """)


@runs(name="0006_outcomes")
def _runs_0006(db) -> None:
    """How executions ended, per tenant and hour of creation: the dashboard's chart and success rate.

    `usage` counts executions when they are created, not how they end, and counting a million rows
    by status per page view is far over the dashboard's 100 ms. Triggers add an execution to its
    hour when it reaches succeeded, failed or cancelled (inserted so, or updated to it) and take it
    back when it leaves that status (a retry), so every writer (engine, cancel, retry, a bulk load)
    keeps it right; about 10 us per finished execution. Like `usage`, it is kept when retention
    deletes old executions. Existing executions are counted once here.
    """
    db.executescript("""
    CREATE TABLE outcomes (
        tenant_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, hour)
    ) WITHOUT ROWID;
    CREATE TRIGGER outcomes_insert AFTER INSERT ON executions
    WHEN new.status IN ('succeeded', 'failed', 'cancelled') BEGIN
        INSERT INTO outcomes (tenant_id, hour, succeeded, failed, cancelled)
            VALUES (new.tenant_id, CAST(new.created_at / 3600 AS INTEGER), new.status = 'succeeded',
                    new.status = 'failed', new.status = 'cancelled')
            ON CONFLICT (tenant_id, hour) DO UPDATE SET succeeded = succeeded + excluded.succeeded,
                failed = failed + excluded.failed, cancelled = cancelled + excluded.cancelled;
    END;
    CREATE TRIGGER outcomes_update AFTER UPDATE OF status ON executions
    WHEN old.status IS NOT new.status AND (old.status IN ('succeeded', 'failed', 'cancelled')
                                           OR new.status IN ('succeeded', 'failed', 'cancelled')) BEGIN
        INSERT INTO outcomes (tenant_id, hour, succeeded, failed, cancelled)
            VALUES (new.tenant_id, CAST(new.created_at / 3600 AS INTEGER),
                    (new.status = 'succeeded') - (old.status = 'succeeded'),
                    (new.status = 'failed') - (old.status = 'failed'),
                    (new.status = 'cancelled') - (old.status = 'cancelled'))
            ON CONFLICT (tenant_id, hour) DO UPDATE SET succeeded = succeeded + excluded.succeeded,
                failed = failed + excluded.failed, cancelled = cancelled + excluded.cancelled;
    END;
    INSERT INTO outcomes (tenant_id, hour, succeeded, failed, cancelled)
        SELECT tenant_id, CAST(created_at / 3600 AS INTEGER), sum(status = 'succeeded'), sum(status = 'failed'),
               sum(status = 'cancelled')
        FROM executions WHERE status IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    """)



@runs(name="0007_trigger_cursors")
def _runs_0007(db) -> None:
    """Where each polling trigger got to: the cursor its last poll returned (JSON), stored in the
    transaction that records the execution of that poll's items, so that across restarts nothing
    is processed twice and nothing is lost (a poll whose execution was never committed repeats).
    """
    db.executescript("""
    CREATE TABLE trigger_cursors (
        flow_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        cursor TEXT,
        polled_at REAL NOT NULL
    );
    """)


@control(name="0008_imported_connectors")
def _control_0008(db) -> None:
    """Connectors a tenant imported from an OpenAPI document (connectors/openapi.py): the document
    as JSON (at most 8 MiB, as the importer checks) and where it came from. Each process builds the
    node types from it (appliance.catalog's per-tenant registry overlay); they go with the tenant.
    """
    db.executescript("""
    CREATE TABLE imported_connectors (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        source TEXT NOT NULL,
        spec TEXT NOT NULL CHECK (length(CAST(spec AS BLOB)) <= 8388608),
        created_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name)
    );
    """)


@runs(name="0008_incremental_vacuum", transactional=False)
def _runs_0008(db) -> None:
    """Give the space of deleted executions back to the file system a little at a time: with
    auto_vacuum=INCREMENTAL the worker's housekeeping runs `PRAGMA incremental_vacuum(N)` after
    retention deletes (appliance.runs.Runs.vacuum). The mode takes effect on an existing file only
    through a VACUUM, which rewrites it once here (outside a transaction, at the upgrade's start).
    """
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")
    db.execute("VACUUM")


@runs(name="0009_outcomes_counted_on_insert")
def _runs_0009(db) -> None:
    """Executions inserted already finished (a synchronous webhook's whole run is one insert) are
    added to `outcomes` by the group commit's usage job (appliance.usage) instead of a trigger per
    row: the trigger was about 50,000 CPU instructions of the roughly 300,000 SQLite and its
    bindings spend on such a run (measured with valgrind). Only RunStore inserts finished rows;
    the UPDATE trigger still counts every status change of a stored execution."""
    db.execute("DROP TRIGGER IF EXISTS outcomes_insert")
