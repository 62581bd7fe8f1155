-- The control plane's store (issue 12). Times are unix milliseconds unless named *_unix
-- (seconds). Lists are JSON arrays in TEXT columns: the store never queries inside them.

CREATE TABLE workspaces (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- API keys: the id is the <id> of pst_<id>_<secret>; only the argon2id hash of the whole
-- key is stored. Ids are unique across workspaces (the gateway finds a key by id alone).
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces(id),
    name           TEXT NOT NULL,
    hash           TEXT NOT NULL,
    leases         TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    allow_ips      TEXT NOT NULL,
    deny_ips       TEXT NOT NULL,
    rate_limit     TEXT,
    expires_unix   BIGINT,
    revoked_at     BIGINT,
    rotated_from   TEXT,
    version        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, id);

-- Admin tokens: the bootstrap token (workspace NULL: every workspace) and personal access
-- tokens. Only the SHA-256 of the token is stored.
CREATE TABLE admin_tokens (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT REFERENCES workspaces(id),
    role         TEXT NOT NULL,
    name         TEXT NOT NULL,
    digest       TEXT NOT NULL UNIQUE,
    bootstrap    BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_unix BIGINT,
    revoked_at   BIGINT
);

-- The first answer to a POST with an Idempotency-Key, per principal.
CREATE TABLE idempotency_keys (
    principal      TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    status         BIGINT NOT NULL,
    body           TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);

-- The evidence chain: entry is the RFC 8785 canonical JSON of one event, which names the
-- SHA-256 of the entry before it; hash is the SHA-256 of entry.
CREATE TABLE audit_log (
    seq   BIGINT PRIMARY KEY,
    entry TEXT NOT NULL,
    hash  TEXT NOT NULL
);

-- Signed statements "the chain up to seq ends in hash", by the control plane's Ed25519 key.
CREATE TABLE audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    hash       TEXT NOT NULL,
    signed_at  BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);
