//! Writing the gateway's own answers — problem documents and the plain text of its health
//! endpoints — to a Pingora session. Nothing here decides anything.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::problem::Refusal;

/// The field that names a request to the caller and to the origin.
pub const REQUEST_ID_FIELD: &str = "x-request-id";

/// Answers the request with the refusal's problem document and ends it.
pub async fn problem(
    session: &mut Session,
    request_id: &str,
    refusal: &Refusal,
) -> pingora::Result<()> {
    let problem = &refusal.problem;
    let body = problem.body(request_id);
    let fields = problem.headers();
    let mut resp = ResponseHeader::build(
        problem.status(),
        Some(fields.len() + refusal.headers.len() + 2),
    )?;
    for (name, value) in fields.into_iter().chain(refusal.headers.iter().cloned()) {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(REQUEST_ID_FIELD, request_id)?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Answers with a short `text/plain` body.
pub async fn plain(session: &mut Session, status: u16, body: &'static str) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header("content-type", "text/plain")?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body.as_bytes())), true)
        .await?;
    Ok(())
}

/// A fresh request id: 128 random bits in hex.
pub fn new_request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
