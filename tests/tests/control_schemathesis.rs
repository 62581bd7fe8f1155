//! A property-based run of schemathesis (from PyPI, tests/mcp/requirements.txt) against the
//! OpenAPI document the control plane serves, through the gateway's listener, on SQLite and
//! on PostgreSQL: no 5xx, and no answer whose status, content type, headers or body contradict
//! the document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use postern_tests::gateway::TestGateway;
use postern_tests::postgres::{Db, TestDb};
use postern_tests::{spawn_origin, TestNet};

/// Longest one schemathesis run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Examples per operation: enough to reach every validation branch, bounded in time.
const EXAMPLES: &str = "40";

async fn schemathesis(kind: Db) {
    let python = tokio::task::spawn_blocking(|| postern_tests::python::with_module("schemathesis"))
        .await
        .unwrap();
    let db = TestDb::new(kind);
    let net = TestNet::start().await;
    let web = net.expose("web", spawn_origin().await).await;
    // The admin API's own rate limit would answer 429 to a fuzzer: raised for this run.
    let gw = TestGateway::start_with_control(
        &net,
        &[("web", &web)],
        &db.url,
        "admin_requests_per_second = 100000\n",
    )
    .await;
    let token = gw.admin_token.clone().unwrap();
    // Real resources for the path parameters, so that operations reach past the 404.
    let ws = post(&gw, &token, "/api/v1/workspaces", r#"{"name": "team-a"}"#).await;
    let ws_id = ws["id"].as_str().unwrap().to_owned();
    let key = post(
        &gw,
        &token,
        &format!("/api/v1/workspaces/{ws_id}/keys"),
        r#"{"name": "k", "leases": ["web"]}"#,
    )
    .await;
    let key_id = key["api_key"]["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.ws\" = \"{ws_id}\"\n\"path.id\" = \"{key_id}\"\n"),
    )
    .unwrap();
    let base = format!("http://{}", gw.http);
    let schema = format!("{base}/api/v1/openapi.json");
    let auth = format!("Authorization: Bearer {token}");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(python);
        cmd.args(["-m", "schemathesis.cli", "--config-file"])
            .arg(&config)
            .args(["run", &schema, "--url", &base])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .args(["-H", &auth])
            .args([
                "--max-examples",
                EXAMPLES,
                "--seed",
                "1",
                "--generation-deterministic",
            ])
            .args(["--suppress-health-check", "all"])
            .args(["--workers", "1", "--request-timeout", "10", "--no-color"])
            .env("SCHEMATHESIS_HOOKS", "")
            .current_dir(std::env::temp_dir());
        postern_tests::python::run(&mut cmd, RUN_TIMEOUT)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("schemathesis: {e}"));
    let (ok, stdout, stderr) = out;
    eprintln!("{stdout}");
    assert!(ok, "schemathesis found problems:\n{stdout}\n{stderr}");
    // It ran every operation of the document.
    assert!(stdout.contains("passed"), "{stdout}");
}

async fn post(gw: &TestGateway, token: &str, path: &str, body: &str) -> serde_json::Value {
    use http_body_util::BodyExt;
    let mut client = gw.plain().await;
    let req = http::Request::post(path)
        .header(http::header::HOST, "localhost")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(postern_tests::full(bytes::Bytes::from(body.to_owned())))
        .unwrap();
    let resp = postern_tests::send(&mut client, req).await;
    assert_eq!(resp.status(), http::StatusCode::CREATED);
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    schemathesis(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    schemathesis(Db::Postgres).await;
}
