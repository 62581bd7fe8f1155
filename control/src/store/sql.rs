//! The SQL both stores share. SQLite and PostgreSQL accept the same statements here
//! (`$N` placeholders, `BIGINT` columns, `ON CONFLICT DO NOTHING`), so one macro writes the
//! [`Store`](super::Store) implementation for each pool type; what differs — opening, the
//! migrations, and how an audit append excludes other writers — is passed in.

/// Implements `Store` for `$ty` (a struct with a `pool: sqlx::Pool<$db>` field).
/// `$lock` is run first in every audit-append transaction.
macro_rules! impl_store {
    ($ty:ty, $db:ty, $backend:expr, $lock:expr) => {
        use sqlx::Row as _;

        fn workspace_from(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Workspace, sqlx::Error> {
            Ok($crate::store::Workspace {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                display_name: row.try_get("display_name")?,
                version: row.try_get("version")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn api_key_from(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::store::ApiKeyRecord, $crate::store::StoreError> {
            let get = |e: sqlx::Error| $crate::store::StoreError::Corrupt {
                what: "api key",
                why: e.to_string(),
            };
            let text = |col: &str| row.try_get::<String, _>(col).map_err(get);
            let rate: Option<String> = row.try_get("rate_limit").map_err(get)?;
            Ok($crate::store::ApiKeyRecord {
                id: text("id")?,
                workspace_id: text("workspace_id")?,
                name: text("name")?,
                hash: text("hash")?,
                leases: $crate::store::parse_json("api key leases", &text("leases")?)?,
                scopes: $crate::store::parse_json("api key scopes", &text("scopes")?)?,
                allow_ips: $crate::store::parse_json("api key allow_ips", &text("allow_ips")?)?,
                deny_ips: $crate::store::parse_json("api key deny_ips", &text("deny_ips")?)?,
                rate_limit: match rate {
                    Some(r) => Some($crate::store::parse_json("api key rate_limit", &r)?),
                    None => None,
                },
                expires_unix: row.try_get("expires_unix").map_err(get)?,
                revoked_at: row.try_get("revoked_at").map_err(get)?,
                rotated_from: row.try_get("rotated_from").map_err(get)?,
                version: row.try_get("version").map_err(get)?,
                created_at: row.try_get("created_at").map_err(get)?,
                updated_at: row.try_get("updated_at").map_err(get)?,
            })
        }

        fn token_from(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::AdminToken, sqlx::Error> {
            Ok($crate::store::AdminToken {
                id: row.try_get("id")?,
                workspace_id: row.try_get("workspace_id")?,
                role: row.try_get("role")?,
                name: row.try_get("name")?,
                digest: row.try_get("digest")?,
                bootstrap: row.try_get("bootstrap")?,
                created_at: row.try_get("created_at")?,
                expires_unix: row.try_get("expires_unix")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        fn audit_from(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::AuditRow, sqlx::Error> {
            Ok($crate::store::AuditRow {
                seq: row.try_get("seq")?,
                entry: row.try_get("entry")?,
                hash: row.try_get("hash")?,
            })
        }

        fn page<T>(
            mut items: Vec<T>,
            limit: u32,
            id: impl Fn(&T) -> String,
        ) -> $crate::store::Page<T> {
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(&id)
            } else {
                None
            };
            $crate::store::Page { items, next }
        }

        const KEY_COLUMNS: &str = "id, workspace_id, name, hash, leases, scopes, allow_ips, \
            deny_ips, rate_limit, expires_unix, revoked_at, rotated_from, version, created_at, \
            updated_at";

        #[async_trait::async_trait]
        impl $crate::store::Store for $ty {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }

            async fn create_workspace(
                &self,
                ws: &$crate::store::Workspace,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO workspaces (id, name, display_name, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&ws.id)
                .bind(&ws.name)
                .bind(&ws.display_name)
                .bind(ws.version)
                .bind(ws.created_at)
                .bind(ws.updated_at)
                .execute(&self.pool)
                .await
                .map_err(|e| match $crate::store::db_err(e) {
                    $crate::store::StoreError::Conflict(_) => {
                        $crate::store::StoreError::Conflict("workspace")
                    }
                    other => other,
                })?;
                Ok(())
            }

            async fn workspace(
                &self,
                id: &str,
            ) -> Result<Option<$crate::store::Workspace>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM workspaces WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::db_err)?;
                row.as_ref()
                    .map(workspace_from)
                    .transpose()
                    .map_err($crate::store::db_err)
            }

            async fn workspace_by_name(
                &self,
                name: &str,
            ) -> Result<Option<$crate::store::Workspace>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM workspaces WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::db_err)?;
                row.as_ref()
                    .map(workspace_from)
                    .transpose()
                    .map_err($crate::store::db_err)
            }

            async fn list_workspaces(
                &self,
                q: &$crate::store::ListQuery,
            ) -> Result<$crate::store::Page<$crate::store::Workspace>, $crate::store::StoreError> {
                let limit = q.limit();
                let rows = sqlx::query(
                    "SELECT * FROM workspaces WHERE ($1 IS NULL OR id > $1) \
                     AND ($2 IS NULL OR name = $2) ORDER BY id LIMIT $3",
                )
                .bind(q.after.as_deref())
                .bind(q.name.as_deref())
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                let items = rows
                    .iter()
                    .map(workspace_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err($crate::store::db_err)?;
                Ok(page(items, limit, |w| w.id.clone()))
            }

            async fn update_workspace(
                &self,
                ws: &$crate::store::Workspace,
                expected: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE workspaces SET display_name = $1, version = $2, updated_at = $3 \
                     WHERE id = $4 AND version = $5",
                )
                .bind(&ws.display_name)
                .bind(ws.version)
                .bind(ws.updated_at)
                .bind(&ws.id)
                .bind(expected)
                .execute(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn insert_api_key(
                &self,
                key: &$crate::store::ApiKeyRecord,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(&format!(
                    "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                ))
                .bind(&key.id)
                .bind(&key.workspace_id)
                .bind(&key.name)
                .bind(&key.hash)
                .bind($crate::store::json_list(&key.leases))
                .bind($crate::store::json_list(&key.scopes))
                .bind($crate::store::json_list(&key.allow_ips))
                .bind($crate::store::json_list(&key.deny_ips))
                .bind(key.rate_limit.as_ref().and_then(|r| serde_json::to_string(r).ok()))
                .bind(key.expires_unix)
                .bind(key.revoked_at)
                .bind(key.rotated_from.as_deref())
                .bind(key.version)
                .bind(key.created_at)
                .bind(key.updated_at)
                .execute(&self.pool)
                .await
                .map_err(|e| match $crate::store::db_err(e) {
                    $crate::store::StoreError::Conflict(_) => {
                        $crate::store::StoreError::Conflict("api key")
                    }
                    other => other,
                })?;
                Ok(())
            }

            async fn api_key(
                &self,
                workspace: &str,
                id: &str,
            ) -> Result<Option<$crate::store::ApiKeyRecord>, $crate::store::StoreError> {
                let row = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE workspace_id = $1 AND id = $2"
                ))
                .bind(workspace)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                row.as_ref().map(api_key_from).transpose()
            }

            async fn list_api_keys(
                &self,
                workspace: &str,
                q: &$crate::store::ListQuery,
            ) -> Result<$crate::store::Page<$crate::store::ApiKeyRecord>, $crate::store::StoreError>
            {
                let limit = q.limit();
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE workspace_id = $1 \
                     AND ($2 IS NULL OR id > $2) AND ($3 IS NULL OR name = $3) \
                     ORDER BY id LIMIT $4"
                ))
                .bind(workspace)
                .bind(q.after.as_deref())
                .bind(q.name.as_deref())
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                let items = rows.iter().map(api_key_from).collect::<Result<Vec<_>, _>>()?;
                Ok(page(items, limit, |k| k.id.clone()))
            }

            async fn update_api_key(
                &self,
                key: &$crate::store::ApiKeyRecord,
                expected: i64,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "UPDATE api_keys SET name = $1, leases = $2, scopes = $3, allow_ips = $4, \
                     deny_ips = $5, rate_limit = $6, expires_unix = $7, revoked_at = $8, \
                     version = $9, updated_at = $10 \
                     WHERE workspace_id = $11 AND id = $12 AND version = $13",
                )
                .bind(&key.name)
                .bind($crate::store::json_list(&key.leases))
                .bind($crate::store::json_list(&key.scopes))
                .bind($crate::store::json_list(&key.allow_ips))
                .bind($crate::store::json_list(&key.deny_ips))
                .bind(key.rate_limit.as_ref().and_then(|r| serde_json::to_string(r).ok()))
                .bind(key.expires_unix)
                .bind(key.revoked_at)
                .bind(key.version)
                .bind(key.updated_at)
                .bind(&key.workspace_id)
                .bind(&key.id)
                .bind(expected)
                .execute(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn active_api_keys(
                &self,
            ) -> Result<Vec<$crate::store::ApiKeyRecord>, $crate::store::StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                rows.iter().map(api_key_from).collect()
            }

            async fn api_keys_stamp(&self) -> Result<String, $crate::store::StoreError> {
                // Every insert adds a row and every update bumps a version: the sum of the
                // versions and the count together change on any write.
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(version), 0) AS BIGINT) AS v, \
                     CAST(COALESCE(MAX(updated_at), 0) AS BIGINT) AS t FROM api_keys",
                )
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                let n: i64 = row.try_get("n").map_err($crate::store::db_err)?;
                let v: i64 = row.try_get("v").map_err($crate::store::db_err)?;
                let t: i64 = row.try_get("t").map_err($crate::store::db_err)?;
                Ok(format!("{n}:{v}:{t}"))
            }

            async fn insert_admin_token(
                &self,
                t: &$crate::store::AdminToken,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO admin_tokens (id, workspace_id, role, name, digest, bootstrap, \
                     created_at, expires_unix, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&t.id)
                .bind(t.workspace_id.as_deref())
                .bind(&t.role)
                .bind(&t.name)
                .bind(&t.digest)
                .bind(t.bootstrap)
                .bind(t.created_at)
                .bind(t.expires_unix)
                .bind(t.revoked_at)
                .execute(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                Ok(())
            }

            async fn admin_token_by_digest(
                &self,
                digest: &str,
            ) -> Result<Option<$crate::store::AdminToken>, $crate::store::StoreError> {
                let row = sqlx::query("SELECT * FROM admin_tokens WHERE digest = $1")
                    .bind(digest)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::db_err)?;
                row.as_ref()
                    .map(token_from)
                    .transpose()
                    .map_err($crate::store::db_err)
            }

            async fn has_bootstrap_token(&self) -> Result<bool, $crate::store::StoreError> {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n FROM admin_tokens WHERE bootstrap = $1",
                )
                .bind(true)
                .fetch_one(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                let n: i64 = row.try_get("n").map_err($crate::store::db_err)?;
                Ok(n > 0)
            }

            async fn idempotent_answer(
                &self,
                principal: &str,
                key: &str,
            ) -> Result<Option<$crate::store::IdempotentAnswer>, $crate::store::StoreError> {
                let row = sqlx::query(
                    "SELECT request_digest, status, body FROM idempotency_keys \
                     WHERE principal = $1 AND key = $2",
                )
                .bind(principal)
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                let Some(row) = row else { return Ok(None) };
                let status: i64 = row.try_get("status").map_err($crate::store::db_err)?;
                Ok(Some($crate::store::IdempotentAnswer {
                    request_digest: row.try_get("request_digest").map_err($crate::store::db_err)?,
                    status: u16::try_from(status).map_err(|e| $crate::store::StoreError::Corrupt {
                        what: "idempotent answer",
                        why: e.to_string(),
                    })?,
                    body: row.try_get("body").map_err($crate::store::db_err)?,
                }))
            }

            async fn keep_idempotent_answer(
                &self,
                principal: &str,
                key: &str,
                answer: &$crate::store::IdempotentAnswer,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query(
                    "INSERT INTO idempotency_keys (principal, key, request_digest, status, body, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(principal)
                .bind(key)
                .bind(&answer.request_digest)
                .bind(i64::from(answer.status))
                .bind(&answer.body)
                .bind($crate::store::now_ms())
                .execute(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn append_audit(
                &self,
                events: &[serde_json::Value],
            ) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
                let mut tx = self.pool.begin().await.map_err($crate::store::db_err)?;
                sqlx::query($lock)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::store::db_err)?;
                let tail = sqlx::query("SELECT seq, entry, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::store::db_err)?;
                let mut prev = tail
                    .as_ref()
                    .map(audit_from)
                    .transpose()
                    .map_err($crate::store::db_err)?
                    .map(|r| (r.seq, r.hash));
                let mut written = Vec::with_capacity(events.len());
                for event in events {
                    let row = $crate::chain::seal(prev.as_ref().map(|(s, h)| (*s, h.as_str())), event)
                        .map_err(|e| $crate::store::StoreError::Corrupt {
                            what: "audit event",
                            why: e.to_string(),
                        })?;
                    sqlx::query("INSERT INTO audit_log (seq, entry, hash) VALUES ($1, $2, $3)")
                        .bind(row.seq)
                        .bind(&row.entry)
                        .bind(&row.hash)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::store::db_err)?;
                    prev = Some((row.seq, row.hash.clone()));
                    written.push(row);
                }
                tx.commit().await.map_err($crate::store::db_err)?;
                Ok(written)
            }

            async fn audit_rows(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::store::AuditRow>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, entry, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit.max(1)))
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                rows.iter()
                    .map(audit_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err($crate::store::db_err)
            }

            async fn audit_tail(
                &self,
            ) -> Result<Option<$crate::store::AuditRow>, $crate::store::StoreError> {
                let row = sqlx::query(
                    "SELECT seq, entry, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                row.as_ref()
                    .map(audit_from)
                    .transpose()
                    .map_err($crate::store::db_err)
            }

            async fn insert_checkpoint(
                &self,
                cp: &$crate::store::Checkpoint,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO audit_checkpoints (seq, hash, signed_at, public_key, signature) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(cp.seq)
                .bind(&cp.hash)
                .bind(cp.signed_at)
                .bind(&cp.public_key)
                .bind(&cp.signature)
                .execute(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                Ok(())
            }

            async fn checkpoints(
                &self,
            ) -> Result<Vec<$crate::store::Checkpoint>, $crate::store::StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, hash, signed_at, public_key, signature FROM audit_checkpoints \
                     ORDER BY seq",
                )
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::db_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::store::Checkpoint {
                            seq: row.try_get("seq")?,
                            hash: row.try_get("hash")?,
                            signed_at: row.try_get("signed_at")?,
                            public_key: row.try_get("public_key")?,
                            signature: row.try_get("signature")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err($crate::store::db_err)
            }
        }
    };
}

pub(crate) use impl_store;
