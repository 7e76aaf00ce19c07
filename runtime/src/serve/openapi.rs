//! The OpenAPI 3.1 document of the server (`GET /openapi.json`), generated from the request and
//! response types and the handlers' annotations.

use utoipa::OpenApi;

use super::api::{
    ErrorBody, ErrorDetail, GenerationRequest, GenerationResponse, PersonRequest, ResponseFormat,
};
use super::http;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idpatch",
        description = "ID-Patch group photos from precompiled ONNX graphs. Errors are \
            `{\"error\": {\"message\": ..., \"field\": ...}}`. With an API key configured, \
            /v1/* needs `Authorization: Bearer <key>`."
    ),
    paths(
        http::create_generation,
        http::cancel_generation,
        http::healthz,
        http::readyz,
        http::metrics,
        http::openapi
    ),
    components(schemas(
        GenerationRequest,
        PersonRequest,
        ResponseFormat,
        GenerationResponse,
        ErrorBody,
        ErrorDetail
    ))
)]
struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
