//! The control plane at `/api/v1`, end to end through the gateway's HTTPS listener, every
//! test on SQLite and on a real PostgreSQL server (`postern_tests::postgres`).
//!
//! * the whole flow: bootstrap token → workspace → key limited to one lease → a caller
//!   reaches that lease (and no other) with it → revocation blocks the next request; with two
//!   gateways on one PostgreSQL store, within the refresh bound on the other gateway too;
//! * tenant isolation on every route of the OpenAPI document;
//! * roles; idempotency replay and reuse; ETag preconditions; malformed bodies;
//! * the evidence chain: `postern audit verify` on an intact log, and naming exactly the
//!   entry that was altered, deleted or reordered in the database, or the cut tail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use postern_tests::gateway::TestGateway;
use postern_tests::postgres::{Db, TestDb};
use postern_tests::{full, send, spawn_origin, TestNet};
use serde_json::{json, Value};

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    gw: &TestGateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut client = gw.h1().await;
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    if !bytes.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let resp = send(&mut client, req.body(full(bytes)).unwrap()).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn raw_call(gw: &TestGateway, method: Method, path: &str, token: &str, body: &str) -> Answer {
    let mut client = gw.h1().await;
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = send(&mut client, req).await;
    let status = resp.status();
    let headers = resp.headers().clone();
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
    }
}

async fn lease_status(gw: &TestGateway, lease: &str, key: &str) -> StatusCode {
    let mut client = gw.h1().await;
    let req = postern_tests::gateway::authed(
        Method::GET,
        &format!("/peer/{lease}/hello"),
        key,
        postern_tests::empty(),
    );
    let resp = send(&mut client, req).await;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

/// Waits (bounded) until the lease answers `want` with `key`.
async fn until_status(
    gw: &TestGateway,
    lease: &str,
    key: &str,
    want: StatusCode,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let got = lease_status(gw, lease, key).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{lease}: wanted {want}, still {got}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn admin(gw: &TestGateway) -> String {
    gw.admin_token
        .clone()
        .expect("a bootstrap token on first start")
}

async fn workspace(gw: &TestGateway, token: &str, name: &str) -> Value {
    let a = call(
        gw,
        Method::POST,
        "/api/v1/workspaces",
        Some(token),
        Some(json!({"name": name})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    a.body
}

async fn new_key(gw: &TestGateway, token: &str, ws: &str, leases: &[&str]) -> (String, String) {
    let a = call(
        gw,
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/keys"),
        Some(token),
        Some(json!({"name": "caller", "leases": leases})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    (
        a.body["key"].as_str().unwrap().to_owned(),
        a.body["api_key"]["id"].as_str().unwrap().to_owned(),
    )
}

async fn new_token(gw: &TestGateway, token: &str, ws: &str, role: &str) -> String {
    let a = call(
        gw,
        Method::POST,
        &format!("/api/v1/workspaces/{ws}/tokens"),
        Some(token),
        Some(json!({"name": role, "role": role})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    a.body["token"].as_str().unwrap().to_owned()
}

/// A net with lease `web` and `other` exposed, and a gateway for both on `db`.
async fn setup(db: &TestDb) -> (TestNet, TestGateway) {
    let (net, gw, _) = setup_with_owner(db).await;
    (net, gw)
}

/// As [`setup`], with the owner of lease `web`.
async fn setup_with_owner(db: &TestDb) -> (TestNet, TestGateway, postern_sdk::Identity) {
    let net = TestNet::start().await;
    let web = net.expose("web", spawn_origin().await).await;
    let other = net.expose("other", spawn_origin().await).await;
    let gw =
        TestGateway::start_with_control(&net, &[("web", &web), ("other", &other)], &db.url, "")
            .await;
    (net, gw, web)
}

async fn whole_flow(kind: Db) {
    let db = TestDb::new(kind);
    let (net, gw, web) = setup_with_owner(&db).await;
    let root = admin(&gw);
    let ws = workspace(&gw, &root, "team-a").await;
    let ws_id = ws["id"].as_str().unwrap();
    let (key, key_id) = new_key(&gw, &root, ws_id, &["web"]).await;
    // A key made through this gateway is served by it at once.
    assert_eq!(lease_status(&gw, "web", &key).await, StatusCode::OK);
    assert_eq!(
        lease_status(&gw, "other", &key).await,
        StatusCode::FORBIDDEN
    );
    // The admin token is not an API key, and the API key is not an admin token.
    assert_eq!(
        lease_status(&gw, "web", &root).await,
        StatusCode::UNAUTHORIZED
    );
    let a = call(&gw, Method::GET, "/api/v1/whoami", Some(&key), None, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.headers[http::header::CONTENT_TYPE],
        "application/problem+json"
    );

    // A second gateway on the same store (PostgreSQL is what several gateways share).
    let second = if kind == Db::Postgres {
        let gw2 = TestGateway::start_with_control(&net, &[("web", &web)], &db.url, "").await;
        assert!(gw2.admin_token.is_none(), "one bootstrap token per store");
        until_status(&gw2, "web", &key, StatusCode::OK, Duration::from_secs(3)).await;
        Some(gw2)
    } else {
        None
    };

    let revoked = call(
        &gw,
        Method::POST,
        &format!("/api/v1/workspaces/{ws_id}/keys/{key_id}/revoke"),
        Some(&root),
        None,
        &[],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.body);
    assert_eq!(revoked.body["state"], "revoked");
    // This gateway: the next request.
    assert_eq!(
        lease_status(&gw, "web", &key).await,
        StatusCode::UNAUTHORIZED
    );
    if let Some(gw2) = &second {
        // The other: within the refresh bound (200 ms here) plus a request's time.
        let started = Instant::now();
        until_status(
            gw2,
            "web",
            &key,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(2),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // The file's key still works: file-only keys keep working beside the store's.
    assert_eq!(lease_status(&gw, "web", &gw.api_key).await, StatusCode::OK);
}

async fn tenant_isolation(kind: Db) {
    let db = TestDb::new(kind);
    let (_net, gw) = setup(&db).await;
    let root = admin(&gw);
    let a = workspace(&gw, &root, "team-a").await;
    let b = workspace(&gw, &root, "team-b").await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let a_admin = new_token(&gw, &root, a_id, "admin").await;
    let (_, b_key) = new_key(&gw, &root, b_id, &["web"]).await;
    let (_, a_key) = new_key(&gw, &root, a_id, &["web"]).await;

    let doc = call(&gw, Method::GET, "/api/v1/openapi.json", None, None, &[]).await;
    assert_eq!(doc.status, StatusCode::OK);
    let mut tried = 0;
    for (template, item) in doc.body["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if !template.contains("{ws}") {
                continue;
            }
            for ws in [b_id, "team-b"] {
                let path = template.replace("{ws}", ws).replace("{id}", &b_key);
                let body = (method != Method::GET).then(|| json!({"name": "x", "leases": ["web"]}));
                let got = call(
                    &gw,
                    method.clone(),
                    &path,
                    Some(&a_admin),
                    body,
                    &[("if-match", "*")],
                )
                .await;
                assert_eq!(
                    got.status,
                    StatusCode::NOT_FOUND,
                    "{method} {path} with workspace A's admin token: {}",
                    got.body
                );
                tried += 1;
            }
            // B's key id under A's own workspace finds nothing either.
            if template.contains("{id}") {
                let path = template.replace("{ws}", a_id).replace("{id}", &b_key);
                let body = (method != Method::GET).then(|| json!({"overlap_seconds": 0}));
                let got = call(
                    &gw,
                    method.clone(),
                    &path,
                    Some(&a_admin),
                    body,
                    &[("if-match", "*")],
                )
                .await;
                assert_eq!(
                    got.status,
                    StatusCode::NOT_FOUND,
                    "{method} {path}: {}",
                    got.body
                );
            }
        }
    }
    assert!(tried >= 20, "only {tried} route checks");
    // The routes without a workspace: the list shows only A, creating one is refused.
    let list = call(
        &gw,
        Method::GET,
        "/api/v1/workspaces",
        Some(&a_admin),
        None,
        &[],
    )
    .await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team-a"]);
    let create = call(
        &gw,
        Method::POST,
        "/api/v1/workspaces",
        Some(&a_admin),
        Some(json!({"name": "team-c"})),
        &[],
    )
    .await;
    assert_eq!(create.status, StatusCode::FORBIDDEN);
    // And B's key is intact after all of that; A's own key is readable by A.
    let b_read = call(
        &gw,
        Method::GET,
        &format!("/api/v1/workspaces/{b_id}/keys/{b_key}"),
        Some(&root),
        None,
        &[],
    )
    .await;
    assert_eq!(b_read.body["state"], "active");
    assert_eq!(b_read.body["name"], "caller");
    let a_read = call(
        &gw,
        Method::GET,
        &format!("/api/v1/workspaces/team-a/keys/{a_key}"),
        Some(&a_admin),
        None,
        &[],
    )
    .await;
    assert_eq!(a_read.status, StatusCode::OK);
}

async fn roles(kind: Db) {
    let db = TestDb::new(kind);
    let (_net, gw) = setup(&db).await;
    let root = admin(&gw);
    let ws = workspace(&gw, &root, "team-a").await;
    let id = ws["id"].as_str().unwrap();
    let keys = format!("/api/v1/workspaces/{id}/keys");
    let audit = format!("/api/v1/workspaces/{id}/audit");
    let body = json!({"name": "k", "leases": ["web"]});
    let expect = [
        ("viewer", StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        ("approver", StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        ("auditor", StatusCode::FORBIDDEN, StatusCode::OK),
        ("operator", StatusCode::CREATED, StatusCode::OK),
        ("admin", StatusCode::CREATED, StatusCode::OK),
    ];
    for (role, create, read_audit) in expect {
        let token = new_token(&gw, &root, id, role).await;
        let a = call(
            &gw,
            Method::POST,
            &keys,
            Some(&token),
            Some(body.clone()),
            &[],
        )
        .await;
        assert_eq!(a.status, create, "{role} creating a key: {}", a.body);
        let a = call(&gw, Method::GET, &audit, Some(&token), None, &[]).await;
        assert_eq!(a.status, read_audit, "{role} reading the audit log");
        let list = call(&gw, Method::GET, &keys, Some(&token), None, &[]).await;
        assert_eq!(list.status, StatusCode::OK, "{role} listing keys");
    }
    // No one hands out more than they hold.
    let operator = new_token(&gw, &root, id, "operator").await;
    let a = call(
        &gw,
        Method::POST,
        &format!("/api/v1/workspaces/{id}/tokens"),
        Some(&operator),
        Some(json!({"name": "x", "role": "admin"})),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    for bad in [
        "pat_nope",
        "Bearer",
        "",
        "pst_abcdefgh_0123456789012345678901234567890123",
    ] {
        let a = call(&gw, Method::GET, "/api/v1/whoami", Some(bad), None, &[]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{bad:?}");
    }
    let a = call(&gw, Method::GET, "/api/v1/whoami", None, None, &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

async fn safety(kind: Db) {
    let db = TestDb::new(kind);
    let (_net, gw) = setup(&db).await;
    let root = admin(&gw);
    let ws = workspace(&gw, &root, "team-a").await;
    let id = ws["id"].as_str().unwrap();
    let keys = format!("/api/v1/workspaces/{id}/keys");
    let body = json!({"name": "k", "leases": ["web"]});

    // Idempotency: the replay is the first answer (the same secret), not a second key.
    let first = call(
        &gw,
        Method::POST,
        &keys,
        Some(&root),
        Some(body.clone()),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = call(
        &gw,
        Method::POST,
        &keys,
        Some(&root),
        Some(body.clone()),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = call(
        &gw,
        Method::POST,
        &keys,
        Some(&root),
        Some(json!({"name": "different", "leases": ["web"]})),
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.body["type"],
        "https://postern.dev/problems/idempotency-key-reused"
    );
    let list = call(&gw, Method::GET, &keys, Some(&root), None, &[]).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    // ETags: no If-Match → 428; a stale one → 412; the current one → 200 and a new tag.
    let key_id = first.body["api_key"]["id"].as_str().unwrap();
    let path = format!("{keys}/{key_id}");
    let read = call(&gw, Method::GET, &path, Some(&root), None, &[]).await;
    let tag = read.headers[http::header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    let patch = json!({"name": "renamed"});
    let a = call(
        &gw,
        Method::PATCH,
        &path,
        Some(&root),
        Some(patch.clone()),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_REQUIRED);
    let a = call(
        &gw,
        Method::PATCH,
        &path,
        Some(&root),
        Some(patch.clone()),
        &[("if-match", &tag)],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_ne!(a.headers[http::header::ETAG].to_str().unwrap(), tag);
    let a = call(
        &gw,
        Method::PATCH,
        &path,
        Some(&root),
        Some(json!({"name": "lost"})),
        &[("if-match", &tag)],
    )
    .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    let read = call(&gw, Method::GET, &path, Some(&root), None, &[]).await;
    assert_eq!(read.body["name"], "renamed");

    // Malformed bodies: field-level problem documents, nothing created.
    let cases = [
        ("{not json", ""),
        (r#"{"name": "k", "leases": ["web"], "admin": true}"#, ""),
        (r#"{"name": "k", "leases": ["we b"]}"#, "leases[0]"),
        (r#"{"name": "", "leases": []}"#, "name"),
        (
            r#"{"name": "k", "leases": ["web"], "allow_ips": ["10.0.0.0/33"]}"#,
            "allow_ips[0]",
        ),
        (
            r#"{"name": "k", "leases": ["web"], "expires_at": 1}"#,
            "expires_at",
        ),
        (
            r#"{"name": "k", "leases": ["web"], "rate_limit": {"requests": 0, "per_seconds": 1}}"#,
            "rate_limit",
        ),
        (r#"{"name": 7, "leases": ["web"]}"#, ""),
    ];
    for (text, field) in cases {
        let a = raw_call(&gw, Method::POST, &keys, &root, text).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert_eq!(
            a.headers[http::header::CONTENT_TYPE],
            "application/problem+json"
        );
        let fields: Vec<&str> = a.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{text}: {fields:?}");
    }
    let big = format!(
        r#"{{"name": "{}", "leases": ["web"]}}"#,
        "x".repeat(70 * 1024)
    );
    let a = raw_call(&gw, Method::POST, &keys, &root, &big).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let list = call(&gw, Method::GET, &keys, Some(&root), None, &[]).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    // Cursor pagination over 25 keys, 10 a page, every key once.
    for i in 0..24 {
        let _ = call(
            &gw,
            Method::POST,
            &keys,
            Some(&root),
            Some(json!({"name": format!("k{i}"), "leases": ["web"]})),
            &[],
        )
        .await;
    }
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("{keys}?limit=10&cursor={c}"),
            None => format!("{keys}?limit=10"),
        };
        let page = call(&gw, Method::GET, &path, Some(&root), None, &[]).await;
        for item in page.body["items"].as_array().unwrap() {
            assert!(seen.insert(item["id"].as_str().unwrap().to_owned()));
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    let by_name = call(
        &gw,
        Method::GET,
        &format!("{keys}?name=k7"),
        Some(&root),
        None,
        &[],
    )
    .await;
    assert_eq!(by_name.body["items"].as_array().unwrap().len(), 1);
    let bad = call(
        &gw,
        Method::GET,
        &format!("{keys}?limit=0"),
        Some(&root),
        None,
        &[],
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Runs `postern audit verify` on `url`; returns (exit success, stdout).
fn verify(url: &str, public: &str) -> (bool, String) {
    let out = std::process::Command::new(postern_tests::built_binary("postern"))
        .args(["audit", "verify", "--database", url, "--public-key", public])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs one SQL statement on the test database, as someone with write access to it would.
async fn tamper(db: &TestDb, sql: &str) {
    match db.kind {
        Db::Sqlite => {
            let path = db.url.strip_prefix("sqlite://").unwrap();
            let store =
                postern_control::store::sqlite::SqliteStore::open(std::path::Path::new(path))
                    .await
                    .unwrap();
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
        Db::Postgres => {
            let store = postern_control::store::postgres::PgStore::connect(&db.url)
                .await
                .unwrap();
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
    }
}

async fn evidence(kind: Db) {
    use base64::Engine as _;
    let db = TestDb::new(kind);
    let (net, gw) = setup(&db).await;
    let public =
        base64::engine::general_purpose::STANDARD.encode(net.control_plane_public().to_bytes());
    let root = admin(&gw);
    let ws = workspace(&gw, &root, "team-a").await;
    let id = ws["id"].as_str().unwrap().to_owned();
    for i in 0..8 {
        new_key(&gw, &root, &id, &[&format!("lease-{i}")]).await;
    }
    // Every mutation is in the workspace's log, in order.
    let log = call(
        &gw,
        Method::GET,
        &format!("/api/v1/workspaces/{id}/audit"),
        Some(&root),
        None,
        &[],
    )
    .await;
    let actions: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.len(), 9, "{actions:?}");
    assert_eq!(actions[0], "workspace.create");
    assert!(actions[1..].iter().all(|a| *a == "key.create"));
    let control = gw.runtime.control.clone().unwrap();
    // A checkpoint at the tail, signed by the control plane's key (as the writer does every
    // 100 entries and at shutdown).
    let tail = control.store.audit_tail().await.unwrap().unwrap();
    assert!(
        tail.seq >= 10,
        "bootstrap, workspace and 8 keys: {}",
        tail.seq
    );
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("cp.key");
    net.save_control_plane_key(&key_file);
    let cp = postern_sdk::Identity::load(&key_file).unwrap();
    postern_control::audit::checkpoint_now(&*control.store, &cp.signing_key())
        .await
        .unwrap();

    let (ok, out) = verify(&db.url, &public);
    assert!(ok, "an untouched log verifies: {out}");
    assert!(out.contains("intact"), "{out}");
    // A wrong trusted key fails on the checkpoint.
    let other = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let (ok, _) = verify(&db.url, &other);
    assert!(!ok);

    let saved: Vec<(i64, String, String)> = control
        .store
        .audit_rows(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.entry, r.hash))
        .collect();
    let restore = |seq: i64| {
        let (_, entry, hash) = saved.iter().find(|r| r.0 == seq).unwrap().clone();
        format!(
            "INSERT INTO audit_log (seq, entry, hash) VALUES ({seq}, '{}', '{hash}')",
            entry.replace('\'', "''")
        )
    };

    // Altered: entry 4's text changes.
    tamper(
        &db,
        "UPDATE audit_log SET entry = REPLACE(entry, 'key.create', 'key.delete') WHERE seq = 4",
    )
    .await;
    let (ok, out) = verify(&db.url, &public);
    assert!(!ok && out.contains("entry 4: altered"), "{out}");
    tamper(&db, "DELETE FROM audit_log WHERE seq = 4").await;
    tamper(&db, &restore(4)).await;
    assert!(verify(&db.url, &public).0, "restored");

    // Removed: entry 5 is gone; entry 6 no longer follows.
    tamper(&db, "DELETE FROM audit_log WHERE seq = 5").await;
    let (ok, out) = verify(&db.url, &public);
    assert!(
        !ok && out.contains("entry 6: does not follow entry 4"),
        "{out}"
    );
    tamper(&db, &restore(5)).await;
    assert!(verify(&db.url, &public).0);

    // Reordered: entries 6 and 7 swap places.
    tamper(&db, "UPDATE audit_log SET seq = -6 WHERE seq = 6").await;
    tamper(&db, "UPDATE audit_log SET seq = 6 WHERE seq = 7").await;
    tamper(&db, "UPDATE audit_log SET seq = 7 WHERE seq = -6").await;
    let (ok, out) = verify(&db.url, &public);
    assert!(!ok && out.contains("entry 6"), "{out}");
    tamper(&db, "DELETE FROM audit_log WHERE seq IN (6, 7)").await;
    tamper(&db, &restore(6)).await;
    tamper(&db, &restore(7)).await;
    assert!(verify(&db.url, &public).0);

    // Truncated past the checkpoint: the remaining chain is valid, the checkpoint says more.
    tamper(
        &db,
        &format!("DELETE FROM audit_log WHERE seq >= {}", tail.seq - 1),
    )
    .await;
    let (ok, out) = verify(&db.url, &public);
    assert!(
        !ok && out.contains(&format!("checkpoint at entry {}", tail.seq)),
        "{out}"
    );
    assert!(out.contains("tail was removed"), "{out}");
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(postern_tests::postgres::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(postern_tests::postgres::Db::Postgres).await;
                }
            )*
        }
    };
}

on_both!(whole_flow, tenant_isolation, roles, safety, evidence);
