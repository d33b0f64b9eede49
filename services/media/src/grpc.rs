//! `parley.media.v1.MediaService`: glue between the wire and [`Media`].
//! Handlers parse and check what arrives, call the service and convert
//! back; every error becomes a status in `error.rs`.

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, stream::BoxStream};
use parley_proto::media::v1::{
    self as pb, DeleteAttachmentRequest, DeleteAttachmentResponse, DownloadAttachmentRequest,
    DownloadAttachmentResponse, DownloadHeader, GetAttachmentRequest, GetAttachmentResponse,
    PutAttachmentRequest, PutAttachmentResponse, TransferAttachmentRequest,
    TransferAttachmentResponse, TransferStatus, UploadAttachmentRequest, UploadAttachmentResponse,
    download_attachment_response, transfer_attachment_request, transfer_attachment_response,
    upload_attachment_request,
};
use parley_runtime::{
    grpc::status::code_name,
    storage::timestamp,
    token::{Caller, Scope, caller},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    domain::{Attachment, CHUNK_BYTES, FileInfo, parse_id, signed},
    error::Error,
    media::{Media, Transfer},
};

/// The media service. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct MediaService {
    media: Media,
}

impl MediaService {
    /// The gRPC face of `media`.
    pub(crate) fn new(media: Media) -> Self {
        Self { media }
    }
}

impl From<Attachment> for pb::Attachment {
    fn from(attachment: Attachment) -> Self {
        Self {
            has_thumbnail: attachment.thumbnail_type.is_some(),
            id: attachment.id,
            filename: attachment.filename,
            content_type: attachment.content_type,
            size: signed(attachment.size),
            sha256: attachment.sha256,
            uploader_id: attachment.uploader_id,
            created_at: Some(timestamp(attachment.created_at)),
            width: i32::try_from(attachment.width).unwrap_or(0),
            height: i32::try_from(attachment.height).unwrap_or(0),
        }
    }
}

/// The declared file of an upload's first message.
fn file_info(file: Option<pb::FileInfo>) -> Result<FileInfo, Error> {
    let file = file.ok_or_else(|| Error::invalid("file", "is required"))?;
    FileInfo::parse(&file.filename, &file.content_type)
}

/// A chunk of at most `CHUNK_BYTES`.
fn chunk(bytes: Bytes, field: &'static str) -> Result<Bytes, Error> {
    if bytes.len() > CHUNK_BYTES {
        return Err(Error::invalid(
            field,
            format!("is over {CHUNK_BYTES} bytes; send smaller chunks"),
        ));
    }
    Ok(bytes)
}

/// A size or offset from the wire: never negative.
fn non_negative(value: i64, field: &'static str) -> Result<u64, Error> {
    u64::try_from(value).map_err(|_| Error::invalid(field, "must not be negative"))
}

/// Counts an upload's outcome in `parley_media_uploads_total`.
fn counted<T>(method: &'static str, result: Result<T, Error>) -> Result<T, Status> {
    let result = result.map_err(Status::from);
    let code = match &result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    };
    metrics::counter!("parley_media_uploads_total", "method" => method, "result" => code)
        .increment(1);
    result
}

/// The chunks after an `UploadAttachment` stream's first message.
fn upload_chunks(
    requests: Streaming<UploadAttachmentRequest>,
) -> impl Stream<Item = Result<Bytes, Error>> {
    requests.map(|request| match request {
        Ok(UploadAttachmentRequest {
            part: Some(upload_attachment_request::Part::Chunk(bytes)),
        }) => chunk(bytes, "chunk"),
        Ok(_) => Err(Error::invalid(
            "chunk",
            "every message after the first carries a chunk",
        )),
        Err(status) => Err(Error::Stream(status)),
    })
}

/// Reading an attachment needs `chat:read` (it is part of a room's
/// messages) or `media:write` (an uploader reads back what it stored).
fn reader(caller: &Caller) -> Result<(), Status> {
    if caller.has_scope(Scope::MediaWrite) {
        Ok(())
    } else {
        caller.require(Scope::ChatRead)
    }
}

#[tonic::async_trait]
impl pb::media_service_server::MediaService for MediaService {
    async fn put_attachment(
        &self,
        request: Request<PutAttachmentRequest>,
    ) -> Result<Response<PutAttachmentResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::MediaWrite)?;
        let PutAttachmentRequest { file, content } = request.into_inner();
        let stored = async {
            let file = file_info(file)?;
            let content = chunk(content, "content")?;
            let one = futures_util::stream::once(async move { Ok(content) });
            self.media.upload(&caller, file, one).await
        }
        .await;
        let attachment = counted("put", stored)?;
        Ok(Response::new(PutAttachmentResponse {
            attachment: Some(attachment.into()),
        }))
    }

    async fn upload_attachment(
        &self,
        request: Request<Streaming<UploadAttachmentRequest>>,
    ) -> Result<Response<UploadAttachmentResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::MediaWrite)?;
        let mut requests = request.into_inner();
        let stored = async {
            let file = match requests.message().await.map_err(Error::Stream)? {
                Some(UploadAttachmentRequest {
                    part: Some(upload_attachment_request::Part::File(file)),
                }) => file_info(Some(file))?,
                _ => {
                    return Err(Error::invalid(
                        "file",
                        "the first message must name the file",
                    ));
                }
            };
            self.media
                .upload(&caller, file, upload_chunks(requests))
                .await
        }
        .await;
        let attachment = counted("upload", stored)?;
        Ok(Response::new(UploadAttachmentResponse {
            attachment: Some(attachment.into()),
        }))
    }

    type TransferAttachmentStream = ReceiverStream<Result<TransferAttachmentResponse, Status>>;

    async fn transfer_attachment(
        &self,
        request: Request<Streaming<TransferAttachmentRequest>>,
    ) -> Result<Response<Self::TransferAttachmentStream>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::MediaWrite)?;
        let requests = request.into_inner();
        let (answers, stream) = mpsc::channel(4);
        let media = self.media.clone();
        tokio::spawn(async move {
            let outcome = transfer(media, caller, requests, answers.clone()).await;
            if let Err(err) = outcome {
                // A client that left does not read its error.
                let _ = answers.send(Err(Status::from(err))).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn get_attachment(
        &self,
        request: Request<GetAttachmentRequest>,
    ) -> Result<Response<GetAttachmentResponse>, Status> {
        let caller = caller(&request)?;
        reader(&caller)?;
        let id = parse_id(&request.get_ref().id, "id", "attachment")?;
        let attachment = self.media.get(&id).await?;
        Ok(Response::new(GetAttachmentResponse {
            attachment: Some(attachment.into()),
        }))
    }

    type DownloadAttachmentStream = BoxStream<'static, Result<DownloadAttachmentResponse, Status>>;

    async fn download_attachment(
        &self,
        request: Request<DownloadAttachmentRequest>,
    ) -> Result<Response<Self::DownloadAttachmentStream>, Status> {
        let caller = caller(&request)?;
        reader(&caller)?;
        let DownloadAttachmentRequest {
            id,
            offset,
            length,
            thumbnail,
        } = request.into_inner();
        let id = parse_id(&id, "id", "attachment")?;
        let offset = non_negative(offset, "offset")?;
        let length = non_negative(length, "length")?;
        let download = self.media.download(&id, offset, length, thumbnail).await?;
        let header = DownloadAttachmentResponse {
            part: Some(download_attachment_response::Part::Header(DownloadHeader {
                attachment: Some(download.attachment.into()),
                content_type: download.content_type,
                total_size: signed(download.total),
                offset: signed(download.offset),
                length: signed(download.length),
            })),
        };
        let chunks = download.chunks.map(|chunk| {
            let chunk = chunk.map_err(Status::from)?;
            metrics::counter!("parley_media_downloaded_bytes_total").increment(chunk.len() as u64);
            Ok(DownloadAttachmentResponse {
                part: Some(download_attachment_response::Part::Chunk(chunk)),
            })
        });
        Ok(Response::new(
            futures_util::stream::once(async move { Ok(header) })
                .chain(chunks)
                .boxed(),
        ))
    }

    async fn delete_attachment(
        &self,
        request: Request<DeleteAttachmentRequest>,
    ) -> Result<Response<DeleteAttachmentResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::MediaWrite)?;
        let id = parse_id(&request.get_ref().id, "id", "attachment")?;
        self.media.delete(&caller, &id).await?;
        Ok(Response::new(DeleteAttachmentResponse {}))
    }
}

/// One `TransferAttachment` stream: a begin or a resume, answered with
/// where the upload stands, then chunks, each answered once it is stored.
/// Returns when the upload completes or the client stops sending.
async fn transfer(
    media: Media,
    caller: Caller,
    mut requests: Streaming<TransferAttachmentRequest>,
    answers: mpsc::Sender<Result<TransferAttachmentResponse, Status>>,
) -> Result<(), Error> {
    let answers = &answers;
    use transfer_attachment_request::Step;

    let first = requests.message().await.map_err(Error::Stream)?;
    let state = match first.and_then(|request| request.step) {
        Some(Step::Begin(begin)) => {
            let file = file_info(begin.file)?;
            let size = non_negative(begin.size, "size")?;
            match media.begin(&caller, file, size).await {
                Ok(Transfer::Open(upload)) => Transfer::Open(upload),
                // Refused, or an empty file: the upload's outcome.
                done => counted("transfer", done).map_err(Error::Stream)?,
            }
        }
        Some(Step::Resume(resume)) => {
            let id = parse_id(&resume.upload_id, "upload_id", "upload")?;
            media.resume(&caller, &id).await?
        }
        Some(Step::Chunk(_)) | None => {
            return Err(Error::invalid(
                "begin",
                "the first message must begin or resume an upload",
            ));
        }
    };
    let mut upload = match state {
        Transfer::Open(upload) => upload,
        complete @ Transfer::Complete(_) => return answer(answers, complete).await,
    };
    send(answers, status(&upload)).await?;
    loop {
        let Some(request) = requests.message().await.map_err(Error::Stream)? else {
            return Ok(());
        };
        let Some(Step::Chunk(part)) = request.step else {
            return Err(Error::invalid(
                "chunk",
                "every message after the first carries a chunk",
            ));
        };
        let data = chunk(part.data, "data")?;
        let offset = non_negative(part.offset, "offset")?;
        match media.append(upload, offset, data).await {
            Ok(Transfer::Open(next)) => {
                let received = signed(next.received);
                send(
                    answers,
                    transfer_attachment_response::Step::Received(received),
                )
                .await?;
                upload = next;
            }
            done => {
                return answer(answers, counted("transfer", done).map_err(Error::Stream)?).await;
            }
        }
    }
}

fn status(upload: &crate::store::Upload) -> transfer_attachment_response::Step {
    transfer_attachment_response::Step::Status(TransferStatus {
        upload_id: upload.id.clone(),
        received: signed(upload.received),
        size: signed(upload.size),
    })
}

/// Answers where a transfer stands: its status, or its attachment.
async fn answer(
    answers: &mpsc::Sender<Result<TransferAttachmentResponse, Status>>,
    state: Transfer,
) -> Result<(), Error> {
    match state {
        Transfer::Open(upload) => send(answers, status(&upload)).await,
        Transfer::Complete(attachment) => {
            send(
                answers,
                transfer_attachment_response::Step::Attachment(attachment.into()),
            )
            .await
        }
    }
}

async fn send(
    answers: &mpsc::Sender<Result<TransferAttachmentResponse, Status>>,
    step: transfer_attachment_response::Step,
) -> Result<(), Error> {
    answers
        .send(Ok(TransferAttachmentResponse { step: Some(step) }))
        .await
        .map_err(|_| Error::Stream(Status::cancelled("the client went away")))
}
