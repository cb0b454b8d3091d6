//! The admin listener (`server.admin_listen`): `GET /healthz`. Metrics and the admin API
//! grow here.

use crate::proxy::body::ResponseBody;
use crate::proxy::Gateway;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

pub async fn handle(_gw: &Gateway, req: Request<Incoming>) -> Response<ResponseBody> {
    let (status, body) = match (req.method().as_str(), req.uri().path()) {
        ("GET", "/healthz") => (StatusCode::OK, r#"{"status":"ok"}"#),
        (_, "/healthz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"use GET"}}"#,
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no such admin endpoint"}}"#,
        ),
    };
    let mut resp = Response::new(ResponseBody::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
