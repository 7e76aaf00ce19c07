//! The HTTP API's types (request, responses, errors) and the translation of a request into the
//! pipeline's [`Layout`], [`Params`] and face images, with the same checks and messages as the
//! command line, naming the request's fields instead of the flags.

use std::collections::BTreeMap;
use std::path::Path;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::image_io::{self, Rgb8};
use crate::layout::Layout;
use crate::pipeline::Params;
use crate::timings::Timings;
use crate::Error;

/// `POST /v1/generations`: one group photo. Parameter names are diffusers'; defaults are
/// ID-Patch's (and `idpatch generate`'s).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// What the picture shows (at most 10,000 bytes; CLIP reads 77 tokens).
    pub prompt: String,
    /// What the picture should not show (only with `guidance_scale` above 1).
    #[serde(default)]
    pub negative_prompt: String,
    /// Output width in pixels, a multiple of 32, at most the server's largest side.
    pub width: u32,
    /// Output height in pixels, a multiple of 32, at most the server's largest side.
    pub height: u32,
    /// Denoising steps, 1 to the server's most steps.
    #[serde(default = "default_steps")]
    #[schema(default = 50)]
    pub num_inference_steps: usize,
    /// Classifier-free guidance scale, 0 to 100 (above 1: the graphs run on [negative, prompt]).
    #[serde(default = "default_guidance")]
    #[schema(default = 5.5)]
    pub guidance_scale: f64,
    /// ControlNet conditioning scale, 0 to 10.
    #[serde(default = "default_controlnet_scale")]
    #[schema(default = 0.8)]
    pub controlnet_conditioning_scale: f64,
    /// Fraction of the schedule before which the ControlNet is skipped, in [0, 1).
    #[serde(default)]
    pub control_guidance_start: f64,
    /// Fraction of the schedule after which the ControlNet is skipped, in (start, 1].
    #[serde(default = "default_control_end")]
    #[schema(default = 1.0)]
    pub control_guidance_end: f64,
    /// Share of the steps (the last ones) that see the ID tokens, in [0, 1].
    #[serde(default = "default_injection")]
    #[schema(default = 0.8)]
    pub id_injection_ratio: f64,
    /// `euler`, `euler-a`, `ddim` or `dpmpp-2m` (default: the model set's scheduler).
    #[serde(default)]
    pub scheduler: Option<String>,
    /// Seed of the initial noise (and of Euler ancestral's noise).
    #[serde(default)]
    pub seed: u64,
    /// The people, 1 to the server's most people, in the order their faces bind.
    pub people: Vec<PersonRequest>,
    /// `png`: the body is the PNG; `b64_json`: a JSON object with the base64 PNG.
    #[serde(default)]
    pub response_format: ResponseFormat,
    /// Server-Sent Events: `queued`, `started`, one `step` per denoising step, then `image` (or
    /// `error`).
    #[serde(default)]
    pub stream: bool,
}

fn default_steps() -> usize {
    Params::default().steps
}
fn default_guidance() -> f64 {
    Params::default().guidance
}
fn default_controlnet_scale() -> f64 {
    Params::default().controlnet_scale
}
fn default_control_end() -> f64 {
    Params::default().control_guidance_end
}
fn default_injection() -> f64 {
    Params::default().id_injection_ratio
}

/// One person: a face photo and where it goes, as in a layout file.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonRequest {
    /// The face photo, PNG or JPEG, base64 (a `data:image/...;base64,` prefix is allowed).
    /// Absent in multipart requests, whose `face` file parts give the photos in order.
    #[serde(default)]
    pub face: Option<String>,
    /// Five face points `[x, y]` in the photo's pixels (left eye, right eye, nose, mouth left,
    /// mouth right); without them the face is detected in the photo (MTCNN), unless the photo
    /// is an aligned 112x112 crop.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Vec<f32>>>)]
    pub face_keypoints: Option<Value>,
    /// Which detected face of the photo is this person's (0 = the largest, the default).
    #[serde(default)]
    #[schema(value_type = Option<u64>)]
    pub face_index: Option<Value>,
    /// Patch centre `[x, y]` in output pixels (pose-free person).
    #[serde(default)]
    #[schema(value_type = Option<Vec<f32>>)]
    pub position: Option<Value>,
    /// 17 COCO keypoints `[x, y, score]` in output pixels (a pose).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Vec<f32>>>)]
    pub keypoints: Option<Value>,
}

/// How the image comes back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseFormat {
    #[default]
    Png,
    B64Json,
}

/// The `b64_json` response, and the data of the `image` event of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationResponse {
    /// The generation's id (also in the `x-generation-id` header).
    pub id: String,
    /// The PNG, base64, with the same text chunks as `idpatch generate` writes.
    pub image: String,
    /// The PNG's text chunks: the parameters, the model set and the backend.
    pub parameters: BTreeMap<String, String>,
    /// Seconds per stage (`prepare`, `queue`, the pipeline's stages, `png`, `total`).
    pub timings: BTreeMap<String, f64>,
    /// Warnings (a prompt cut at 77 tokens).
    pub warnings: Vec<String>,
}

/// Every error body: `{"error": {"message": ..., "field": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One line saying what is wrong.
    pub message: String,
    /// The request field at fault (`num_inference_steps`, `people[1].face`, ...), when one is.
    pub field: Option<String>,
}

/// An error answer: status, message, field, and `Retry-After` seconds for 429.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error answer; a message longer than [`MAX_MESSAGE_CHARS`] (it may quote client input,
    /// such as an unknown field's name) is cut.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: cut(&message.into(), MAX_MESSAGE_CHARS),
            field: None,
            retry_after: None,
        }
    }

    /// 400 naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        let field = echo(&field.into());
        ApiError {
            message: cut(&format!("{field}: {}", message.into()), MAX_MESSAGE_CHARS),
            field: Some(field),
            ..ApiError::new(StatusCode::BAD_REQUEST, "")
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                field: self.field.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// CLI flag names as the request names them.
const FLAG_FIELDS: [(&str, &str); 9] = [
    ("--negative-prompt", "negative_prompt"),
    ("--prompt", "prompt"),
    ("--steps", "num_inference_steps"),
    ("--guidance", "guidance_scale"),
    ("--controlnet-scale", "controlnet_conditioning_scale"),
    ("--id-injection-ratio", "id_injection_ratio"),
    ("--control-guidance-start", "control_guidance_start"),
    ("--control-guidance-end", "control_guidance_end"),
    ("--scheduler", "scheduler"),
];

/// The request field a library error's input names: flags become parameter names and layout
/// fields lose their `layout ` prefix (`layout people[1].position` -> `people[1].position`).
fn field_of(input: &str) -> Option<String> {
    if let Some((_, field)) = FLAG_FIELDS.iter().find(|(flag, _)| *flag == input) {
        return Some(field.to_string());
    }
    match input.strip_prefix("layout ") {
        Some(rest) => Some(rest.to_string()),
        None if input == "layout" => None,
        None => Some(input.to_string()),
    }
}

/// A message with the CLI's flag names replaced by the request's field names.
fn with_field_names(message: &str) -> String {
    let mut out = message.to_string();
    for (flag, field) in FLAG_FIELDS {
        out = out.replace(flag, field);
    }
    out.replace("in the layout", "in the request")
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        match e {
            Error::InvalidInput { input, reason } => {
                let field = field_of(&input);
                let reason = with_field_names(&reason);
                let message = match &field {
                    Some(f) => format!("{f}: {reason}"),
                    None => reason,
                };
                ApiError {
                    message: cut(&message, MAX_MESSAGE_CHARS),
                    field,
                    ..ApiError::new(StatusCode::BAD_REQUEST, "")
                }
            }
            Error::Cancelled { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

/// The server's limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_side: u32,
    pub max_steps: usize,
    pub max_people: usize,
}

/// What a request becomes before the pipeline's prepare stage.
pub struct Parsed {
    pub layout: Layout,
    pub params: Params,
    pub faces: Vec<Rgb8>,
    pub response_format: ResponseFormat,
    pub stream: bool,
}

/// Parses a JSON request body; errors name the field (serde's path) and say what is wrong.
pub fn parse_json(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: GenerationRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // Only a value of the wrong kind is a field's fault; a body that is not JSON (syntax
        // error, cut short) or not an object names none, wherever the parser stopped.
        let named = inner.is_data() && path != "." && !path.starts_with('[');
        let mut field = named.then_some(path);
        // An unknown key is not a field: the object holding it is at fault (none at the top).
        if inner.to_string().starts_with("unknown field") {
            field = field.and_then(|f| f.rsplit_once('.').map(|(parent, _)| parent.to_string()));
        }
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => format!("request body: {inner}"),
        };
        ApiError {
            message: cut(&message, MAX_MESSAGE_CHARS),
            field,
            ..ApiError::new(StatusCode::BAD_REQUEST, "")
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("request body: trailing data after the JSON object: {e}"),
        )
    })?;
    Ok(request)
}

/// Checks the request against the server's limits, then builds the layout (through the layout
/// file's own checks), the parameters and the decoded face images. `files` are the face photos
/// of a multipart request, in people order; for JSON, each person's `face` is decoded.
pub fn to_pipeline(
    request: GenerationRequest,
    files: Option<Vec<Vec<u8>>>,
    limits: RequestLimits,
) -> Result<Parsed, ApiError> {
    check_limits(&request, limits)?;
    let faces = face_bytes(&request.people, files)?
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            image_io::decode_rgb8(bytes).map_err(|reason| {
                ApiError::field(format!("people[{i}].face"), format!("image: {reason}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let layout = layout_of(&request)?;
    let scheduler = request
        .scheduler
        .as_deref()
        .map(str::parse::<crate::scheduler::SchedulerKind>)
        .transpose()
        .map_err(ApiError::from)?;
    let params = Params {
        prompt: request.prompt,
        negative_prompt: request.negative_prompt,
        steps: request.num_inference_steps,
        guidance: request.guidance_scale,
        controlnet_scale: request.controlnet_conditioning_scale,
        id_injection_ratio: request.id_injection_ratio,
        scheduler,
        seed: request.seed,
        bf16_positions: false,
        control_guidance_start: request.control_guidance_start,
        control_guidance_end: request.control_guidance_end,
    };
    params.check()?;
    Ok(Parsed {
        layout,
        params,
        faces,
        response_format: request.response_format,
        stream: request.stream,
    })
}

/// The server's own limits, checked before anything is decoded.
fn check_limits(request: &GenerationRequest, limits: RequestLimits) -> Result<(), ApiError> {
    for (field, side) in [("width", request.width), ("height", request.height)] {
        if side > limits.max_side {
            return Err(ApiError::field(
                field,
                format!(
                    "{side} exceeds this server's largest side, {}",
                    limits.max_side
                ),
            ));
        }
    }
    if request.num_inference_steps > limits.max_steps {
        return Err(ApiError::field(
            "num_inference_steps",
            format!(
                "{} is more than this server's most steps, {}",
                request.num_inference_steps, limits.max_steps
            ),
        ));
    }
    let people = request.people.len();
    if people > limits.max_people {
        return Err(ApiError::field(
            "people",
            format!(
                "{people} people, this server takes at most {}",
                limits.max_people
            ),
        ));
    }
    Ok(())
}

/// Each person's face photo bytes: base64-decoded from the JSON, or the multipart files.
fn face_bytes(
    people: &[PersonRequest],
    files: Option<Vec<Vec<u8>>>,
) -> Result<Vec<Vec<u8>>, ApiError> {
    if let Some(files) = files {
        if let Some(i) = people.iter().position(|p| p.face.is_some()) {
            return Err(ApiError::field(
                format!("people[{i}].face"),
                "give the faces as `face` file parts in a multipart request, not in the JSON",
            ));
        }
        if files.len() != people.len() {
            return Err(ApiError::field(
                "face",
                format!("{} face files for {} people", files.len(), people.len()),
            ));
        }
        return Ok(files);
    }
    people
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = format!("people[{i}].face");
            let text = p.face.as_deref().ok_or_else(|| {
                ApiError::field(&field, "missing: every person needs a face photo (base64)")
            })?;
            let data = match text.split_once(";base64,") {
                Some((prefix, data)) if prefix.starts_with("data:") => data,
                _ => text,
            };
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|e| ApiError::field(&field, format!("not valid base64: {e}")))
        })
        .collect()
}

/// The layout the request describes, checked by [`Layout::parse`] like a layout file.
fn layout_of(request: &GenerationRequest) -> Result<Layout, ApiError> {
    let people: Vec<Value> = request
        .people
        .iter()
        .map(|p| {
            let mut person = serde_json::Map::new();
            for (key, value) in [
                ("face_keypoints", &p.face_keypoints),
                ("face_index", &p.face_index),
                ("position", &p.position),
                ("keypoints", &p.keypoints),
            ] {
                if let Some(v) = value {
                    person.insert(key.into(), v.clone());
                }
            }
            Value::Object(person)
        })
        .collect();
    let layout = serde_json::json!({
        "width": request.width,
        "height": request.height,
        "people": people,
    });
    Ok(Layout::parse(&layout.to_string(), Path::new(""), false)?)
}

/// Seconds per stage of a finished generation.
pub fn timings_map(t: &Timings) -> BTreeMap<String, f64> {
    [
        ("faces", t.faces),
        ("tokenize", t.tokenize),
        ("text_encoders", t.text_encoders),
        ("id_graphs", t.id_graphs),
        ("condition", t.condition),
        ("controlnet", t.controlnet),
        ("unet", t.unet),
        ("scheduler", t.scheduler),
        ("vae_decode", t.vae_decode),
        ("to_rgb", t.to_rgb),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_secs_f64()))
    .collect()
}

/// Longest piece of client input echoed back in an error (field names, ids), in characters.
pub const MAX_ECHO_CHARS: usize = 64;

/// Longest error message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// `text` as an error may echo it: at most [`MAX_ECHO_CHARS`] characters, a longer one cut with
/// `...` (a client cannot make the server send back what it sent in bulk).
pub fn echo(text: &str) -> String {
    cut(text, MAX_ECHO_CHARS)
}

/// `text` cut to `most` characters plus `...` when longer.
fn cut(text: &str, most: usize) -> String {
    match text.char_indices().nth(most) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_input_is_echoed_short() {
        let long = "é".repeat(30_000);
        let e = ApiError::field(long.as_str(), "unexpected part");
        let field = e.field.unwrap();
        assert_eq!(field.chars().count(), MAX_ECHO_CHARS + 3);
        assert!(field.ends_with("..."));
        assert!(e.message.len() < 200, "{}", e.message);
        assert_eq!(echo("people[0]"), "people[0]");
        let unknown = format!(r#"{{"prompt": "p", "{}": 1}}"#, "x".repeat(30_000));
        let e = parse_json(unknown.as_bytes()).unwrap_err();
        assert!(
            e.message.chars().count() <= MAX_MESSAGE_CHARS + 3,
            "{}",
            e.message.len()
        );
    }

    #[test]
    fn parse_errors_name_a_field_only_when_one_is_at_fault() {
        let field = |body: &str| parse_json(body.as_bytes()).unwrap_err().field;
        let person = r#"{"prompt": "p", "width": 64, "height": 64, "people": [{"face": "#;
        assert_eq!(field(person), None, "cut short");
        assert_eq!(field("[1, 2]"), None, "not an object");
        assert_eq!(field(r#"{"cfg": 5}"#), None, "unknown key at the top");
        let unknown = format!(r#"{person}"x", "name": 1}}]}}"#);
        assert_eq!(field(&unknown).as_deref(), Some("people[0]"));
        let wrong = r#"{"prompt": "p", "num_inference_steps": "ten"}"#;
        assert_eq!(field(wrong).as_deref(), Some("num_inference_steps"));
    }

    #[test]
    fn flags_and_layout_fields_become_request_fields() {
        assert_eq!(field_of("--steps").as_deref(), Some("num_inference_steps"));
        assert_eq!(
            field_of("layout people[2].position").as_deref(),
            Some("people[2].position")
        );
        assert_eq!(field_of("layout"), None);
        assert_eq!(
            with_field_names("0.5 must be below --control-guidance-end (0.2)"),
            "0.5 must be below control_guidance_end (0.2)"
        );
    }
}
