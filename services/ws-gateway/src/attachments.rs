//! The attachment routes (README: "Attachments"): uploads streamed from the
//! request body (raw, or one `multipart/form-data` part) to media's
//! `UploadAttachment` in chunks, and downloads streamed from
//! `DownloadAttachment` into the response. Neither holds more than a few
//! chunks of a file, whatever its size.
//!
//! Downloads are served so that a file can never act as a page of the web
//! client's origin: `X-Content-Type-Options: nosniff`, `Content-Disposition:
//! attachment` for everything but raster images, and a sandboxing
//! `Content-Security-Policy`, so an uploaded HTML or SVG file is saved, not
//! run.

use std::ops::RangeInclusive;

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use parley_proto::media::v1::{
    Attachment, DeleteAttachmentRequest, DownloadAttachmentRequest, DownloadAttachmentResponse,
    FileInfo, GetAttachmentRequest, UploadAttachmentRequest, download_attachment_response,
    upload_attachment_request,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::{AppState, error::ApiError, rest::Bearer};

/// Bytes per upload chunk sent to media (its limit is 1 MiB). The body is
/// gathered into chunks this large; with the two queued towards media,
/// an upload holds at most about three of them.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Chunks queued between the request body and the media call.
const UPLOAD_QUEUE: usize = 2;

/// The `/api/v1/attachments` routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/attachments",
            // Uploads stream; their size is media's to limit
            // (`MEDIA_MAX_BYTES`), not the extractors' default.
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/attachments/{id}", get(download).delete(delete))
        .route("/api/v1/attachments/{id}/thumbnail", get(thumbnail))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UploadQuery {
    filename: String,
}

/// `POST /api/v1/attachments?filename=<name>`: the raw body with its
/// `Content-Type`, or `multipart/form-data` with one part `file` (whose own
/// filename and type are used).
async fn upload(
    State(state): State<AppState>,
    caller: Bearer,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let declared = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attachment = if declared
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|err| ApiError::invalid(format!("multipart body: {err}")))?
                .ok_or_else(|| ApiError::invalid("the multipart body has no part named `file`"))?;
            if field.name() != Some("file") {
                continue;
            }
            let file = FileInfo {
                filename: field
                    .file_name()
                    .map(str::to_owned)
                    .filter(|name| !name.is_empty())
                    .unwrap_or(query.filename),
                content_type: field.content_type().unwrap_or_default().to_owned(),
            };
            let body = field.map_err(|err| ApiError::invalid(format!("multipart body: {err}")));
            break send_upload(&state, &caller, file, body).await?;
        }
    } else {
        let file = FileInfo {
            filename: query.filename,
            content_type: declared,
        };
        let body = request
            .into_body()
            .into_data_stream()
            .map_err(|err| ApiError::invalid(format!("request body: {err}")));
        send_upload(&state, &caller, file, body).await?
    };
    Ok((StatusCode::CREATED, Json(attachment_json(&attachment))).into_response())
}

/// Streams `body` to media as one upload of `file`. The body is read only
/// as fast as media takes it; should the body fail (the client went away)
/// the call is dropped, which cancels it, and media stores nothing.
async fn send_upload(
    state: &AppState,
    caller: &Bearer,
    file: FileInfo,
    body: impl Stream<Item = Result<Bytes, ApiError>> + Send,
) -> Result<Attachment, ApiError> {
    let (sender, receiver) = mpsc::channel(UPLOAD_QUEUE);
    let first = UploadAttachmentRequest {
        part: Some(upload_attachment_request::Part::File(file)),
    };
    sender
        .send(first)
        .await
        .map_err(|_| ApiError::new(Code::Internal, "internal error"))?;
    let mut media = state.shared.media_uploads.clone();
    let call = media.upload_attachment(caller.request(ReceiverStream::new(receiver)));
    let pump = async move {
        let body = std::pin::pin!(body);
        let mut chunks = Rechunk::new(body);
        while let Some(chunk) = chunks.next().await? {
            let part = UploadAttachmentRequest {
                part: Some(upload_attachment_request::Part::Chunk(chunk)),
            };
            if sender.send(part).await.is_err() {
                // Media answered early (an error); the call says why.
                break;
            }
        }
        Ok::<(), ApiError>(())
        // The sender drops here: the end of the stream completes the upload.
    };
    let mut call = std::pin::pin!(call);
    let answered = tokio::select! {
        answered = &mut call => answered,
        pumped = pump => {
            pumped?;
            call.await
        }
    };
    answered
        .map_err(upload_error)?
        .into_inner()
        .attachment
        .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))
}

/// An upload over `MEDIA_MAX_BYTES` or the quota is 413 (README:
/// "Attachments"); the rest as every route.
fn upload_error(status: Status) -> ApiError {
    let error = ApiError::from(status);
    if error.code() == Code::ResourceExhausted {
        error.with_status(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        error
    }
}

/// The body in chunks of [`UPLOAD_CHUNK`] bytes (the last one shorter).
struct Rechunk<S> {
    body: S,
    buffer: BytesMut,
    done: bool,
}

impl<S: Stream<Item = Result<Bytes, ApiError>> + Unpin> Rechunk<S> {
    fn new(body: S) -> Self {
        Self {
            body,
            buffer: BytesMut::new(),
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, ApiError> {
        while !self.done && self.buffer.len() < UPLOAD_CHUNK {
            match self.body.next().await {
                Some(data) => self.buffer.extend_from_slice(&data?),
                None => self.done = true,
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let take = self.buffer.len().min(UPLOAD_CHUNK);
        Ok(Some(self.buffer.split_to(take).freeze()))
    }
}

/// A token for routes that browsers load by URL (`<img src>`, links):
/// `Authorization: Bearer` or `?token=`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TokenQuery {
    token: String,
}

/// The caller of a download: the header's token, else the query's.
async fn download_caller(
    state: &AppState,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<Bearer, ApiError> {
    let token = crate::rest::bearer_token(headers)
        .or_else(|| (!query.token.is_empty()).then(|| query.token.clone()))
        .ok_or_else(|| ApiError::from(parley_runtime::token::TokenError::Missing))?;
    Bearer::verified(state, token).await
}

/// `GET /api/v1/attachments/{id}`: the bytes, whole or a `Range`.
async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = download_caller(&state, &headers, &query).await?;
    let range = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let mut media = state.shared.media.clone();
    let (offset, length, partial) = match range {
        // A range is resolved against the file's size, which the metadata
        // gives before any byte is sent.
        Some(range) => {
            let attachment = media
                .get_attachment(caller.request(GetAttachmentRequest { id: id.clone() }))
                .await?
                .into_inner()
                .attachment
                .ok_or_else(|| ApiError::new(Code::Internal, "internal error"))?;
            let size = u64::try_from(attachment.size).unwrap_or(0);
            match resolve_range(range, size) {
                RangeAnswer::Whole => (0, 0, false),
                RangeAnswer::Part(part) => (
                    i64::try_from(*part.start()).unwrap_or(i64::MAX),
                    i64::try_from(part.end() - part.start() + 1).unwrap_or(i64::MAX),
                    true,
                ),
                RangeAnswer::Unsatisfiable => {
                    return Ok((
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                    )
                        .into_response());
                }
            }
        }
        None => (0, 0, false),
    };
    let request = DownloadAttachmentRequest {
        id,
        offset,
        length,
        thumbnail: false,
    };
    serve(&mut media, &caller, request, &headers, partial).await
}

/// `GET /api/v1/attachments/{id}/thumbnail`: the image's thumbnail, or 404.
async fn thumbnail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = download_caller(&state, &headers, &query).await?;
    let mut media = state.shared.media.clone();
    let request = DownloadAttachmentRequest {
        id,
        offset: 0,
        length: 0,
        thumbnail: true,
    };
    serve(&mut media, &caller, request, &headers, false).await
}

type MediaClient = parley_proto::media::v1::media_service_client::MediaServiceClient<
    parley_runtime::client::ClientChannel,
>;

/// Opens the download and answers with its header's metadata, then its
/// chunks as they come; 304 when `If-None-Match` names the content.
async fn serve(
    media: &mut MediaClient,
    caller: &Bearer,
    request: DownloadAttachmentRequest,
    headers: &HeaderMap,
    partial: bool,
) -> Result<Response, ApiError> {
    let thumbnail = request.thumbnail;
    let mut stream = media
        .download_attachment(caller.request(request))
        .await?
        .into_inner();
    let header = match stream.message().await? {
        Some(DownloadAttachmentResponse {
            part: Some(download_attachment_response::Part::Header(header)),
        }) => header,
        _ => return Err(ApiError::new(Code::Internal, "internal error")),
    };
    let attachment = header.attachment.unwrap_or_default();
    let etag = format!(
        "\"{}{}\"",
        attachment.sha256,
        if thumbnail { "-thumbnail" } else { "" }
    );
    let cache_control = HeaderValue::from_static("private, max-age=31536000, immutable");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| matches_etag(value, &etag))
    {
        // Dropping the stream cancels the download.
        return Ok((
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, header_value(&etag)),
                (header::CACHE_CONTROL, cache_control),
            ],
        )
            .into_response());
    }

    let content_type = if header.content_type.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        header.content_type
    };
    let mut response = Response::new(Body::from_stream(chunks(stream)));
    *response.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, header_value(&content_type));
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(header.length));
    out.insert(header::ETAG, header_value(&etag));
    out.insert(header::CACHE_CONTROL, cache_control);
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    out.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    out.insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(&content_type, &attachment.filename)),
    );
    if partial {
        let last = (header.offset + header.length - 1).max(header.offset);
        out.insert(
            header::CONTENT_RANGE,
            header_value(&format!(
                "bytes {}-{last}/{}",
                header.offset, header.total_size
            )),
        );
    }
    Ok(response)
}

/// The chunks after a download's header. A failure midway ends the body
/// with an error, which cuts the connection: the client sees a short
/// response rather than a complete-looking wrong one.
fn chunks(
    stream: Streaming<DownloadAttachmentResponse>,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    stream.try_filter_map(|message| async move {
        Ok(match message.part {
            Some(download_attachment_response::Part::Chunk(chunk)) => Some(chunk),
            _ => None,
        })
    })
}

/// `DELETE /api/v1/attachments/{id}`: for its uploader or an admin.
async fn delete(
    State(state): State<AppState>,
    caller: Bearer,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .shared
        .media
        .clone()
        .delete_attachment(caller.request(DeleteAttachmentRequest { id }))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// Serve it whole (no usable range, or several ranges, which a server
    /// may answer whole).
    Whole,
    /// One range.
    Part(RangeInclusive<u64>),
    /// 416.
    Unsatisfiable,
}

fn resolve_range(range: &str, size: u64) -> RangeAnswer {
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        // A malformed header is ignored, as RFC 9110 lets servers do.
        return RangeAnswer::Whole;
    };
    match parsed.validate(size) {
        Ok(ranges) => match <[RangeInclusive<u64>; 1]>::try_from(ranges) {
            Ok([one]) => RangeAnswer::Part(one),
            Err(_) => RangeAnswer::Whole,
        },
        Err(_) => RangeAnswer::Unsatisfiable,
    }
}

/// Whether an `If-None-Match` value names `etag` (or is `*`).
fn matches_etag(value: &str, etag: &str) -> bool {
    value.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

/// Raster images are shown in place; everything else, SVG and HTML
/// included, is a download. The name travels as an ASCII fallback and,
/// when it has other characters, as RFC 8187 UTF-8.
fn content_disposition(content_type: &str, filename: &str) -> String {
    let disposition = if matches!(
        content_type,
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) {
        "inline"
    } else {
        "attachment"
    };
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let fallback = if fallback.is_empty() {
        "file".to_owned()
    } else {
        fallback
    };
    if filename.is_ascii() && fallback == filename {
        format!("{disposition}; filename=\"{fallback}\"")
    } else {
        let encoded =
            percent_encoding::utf8_percent_encode(filename, percent_encoding::NON_ALPHANUMERIC);
        format!("{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
    }
}

/// A header value from text media or this module made; anything that is
/// not a valid value (it cannot happen for what media stores) is left
/// empty rather than failing the response.
fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An attachment as the REST API shows it.
pub(crate) fn attachment_json(attachment: &Attachment) -> Value {
    json!({
        "id": attachment.id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "sha256": attachment.sha256,
        "uploader_id": attachment.uploader_id,
        "created_at": crate::frames::rfc3339_millis(attachment.created_at.as_ref()),
        "width": attachment.width,
        "height": attachment.height,
        "has_thumbnail": attachment.has_thumbnail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(resolve_range("bytes=0-9", 100), RangeAnswer::Part(0..=9));
        assert_eq!(resolve_range("bytes=90-", 100), RangeAnswer::Part(90..=99));
        assert_eq!(resolve_range("bytes=-10", 100), RangeAnswer::Part(90..=99));
        assert_eq!(resolve_range("bytes=0-999", 100), RangeAnswer::Part(0..=99));
        assert_eq!(resolve_range("bytes=100-", 100), RangeAnswer::Unsatisfiable);
        assert_eq!(resolve_range("bytes=0-1,5-6", 100), RangeAnswer::Whole);
        assert_eq!(resolve_range("pages=1", 100), RangeAnswer::Whole);
    }

    #[test]
    fn etags_match_as_if_none_match_lists_them() {
        assert!(matches_etag("\"abc\"", "\"abc\""));
        assert!(matches_etag("\"x\", W/\"abc\"", "\"abc\""));
        assert!(matches_etag("*", "\"abc\""));
        assert!(!matches_etag("\"abd\"", "\"abc\""));
    }

    #[test]
    fn only_raster_images_are_shown_in_place() {
        assert_eq!(
            content_disposition("image/png", "cat.png"),
            "inline; filename=\"cat.png\""
        );
        for risky in ["image/svg+xml", "text/html", "application/pdf"] {
            assert!(content_disposition(risky, "x").starts_with("attachment;"));
        }
        assert_eq!(
            content_disposition("text/plain", "naïve \"quote\".txt"),
            "attachment; filename=\"na_ve _quote_.txt\"; \
             filename*=UTF-8''na%C3%AFve%20%22quote%22%2Etxt"
        );
    }
}
