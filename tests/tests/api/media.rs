//! The media service over gRPC: every RPC with its errors, on Postgres and
//! SQLite, on a folder and on a real S3-compatible server; resumable
//! transfers cut and resumed; expiry; hostile images; and a file far larger
//! than a chunk streamed both ways with the process's memory watched.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use image::ImageFormat;
use parley_proto::media::v1::{
    Attachment, BeginTransfer, DeleteAttachmentRequest, DownloadAttachmentRequest, DownloadHeader,
    FileInfo, GetAttachmentRequest, PutAttachmentRequest, ResumeTransfer,
    TransferAttachmentRequest, TransferAttachmentResponse, TransferChunk, UploadAttachmentRequest,
    download_attachment_response, media_service_client::MediaServiceClient,
    transfer_attachment_request::Step, transfer_attachment_response, upload_attachment_request,
};
use parley_runtime::{grpc::status::invalid_field, test_util::RunningBinary};
use parley_tests::{
    DatabaseBackend, TestStack, authed, binary, channel,
    gateway::wait_until_ready,
    media::{MediaServer, Store, noise, picture, watch_memory},
    rss_kib,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming, transport::Channel};

const MIB: usize = 1024 * 1024;

type Client = MediaServiceClient<Channel>;

/// Each test on Postgres with a folder and on SQLite with S3, so both
/// databases and both stores are covered; the first on all four.
macro_rules! on_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use parley_tests::{DatabaseBackend, media::Store};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_folder() {
                    super::$name(DatabaseBackend::Postgres, Store::Folder).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_s3() {
                    super::$name(DatabaseBackend::Sqlite, Store::S3).await
                }
            }
        )*
    };
}

on_stores!(
    every_rpc_and_its_errors,
    limits_and_quota,
    a_resumable_transfer_survives_a_cut_stream,
    unfinished_uploads_expire_with_their_bytes,
);

mod every_rpc_on_the_other_pairs {
    use parley_tests::{DatabaseBackend, media::Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_s3() {
        super::every_rpc_and_its_errors(DatabaseBackend::Postgres, Store::S3).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_folder() {
        super::every_rpc_and_its_errors(DatabaseBackend::Sqlite, Store::Folder).await
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn file(filename: &str, content_type: &str) -> Option<FileInfo> {
    Some(FileInfo {
        filename: filename.into(),
        content_type: content_type.into(),
    })
}

async fn put(
    client: &mut Client,
    token: &str,
    filename: &str,
    content_type: &str,
    content: &[u8],
) -> Result<Attachment, Status> {
    let request = PutAttachmentRequest {
        file: file(filename, content_type),
        content: Bytes::copy_from_slice(content),
    };
    Ok(client
        .put_attachment(authed(request, token))
        .await?
        .into_inner()
        .attachment
        .unwrap())
}

/// A client stream of `messages` as they are.
async fn upload_messages(
    client: &mut Client,
    token: &str,
    messages: Vec<upload_attachment_request::Part>,
) -> Result<Attachment, Status> {
    let stream = tokio_stream::iter(
        messages
            .into_iter()
            .map(|part| UploadAttachmentRequest { part: Some(part) }),
    );
    Ok(client
        .upload_attachment(authed(stream, token))
        .await?
        .into_inner()
        .attachment
        .unwrap())
}

/// Uploads `content` in chunks of `chunk` bytes.
async fn upload(
    client: &mut Client,
    token: &str,
    filename: &str,
    content: &[u8],
    chunk: usize,
) -> Result<Attachment, Status> {
    let mut messages = vec![upload_attachment_request::Part::File(
        file(filename, "").unwrap(),
    )];
    messages.extend(
        content
            .chunks(chunk)
            .map(|c| upload_attachment_request::Part::Chunk(Bytes::copy_from_slice(c))),
    );
    upload_messages(client, token, messages).await
}

/// Downloads a range: the header, the bytes, and the largest chunk seen.
async fn download(
    client: &mut Client,
    token: &str,
    id: &str,
    offset: i64,
    length: i64,
    thumbnail: bool,
) -> Result<(DownloadHeader, Vec<u8>, usize), Status> {
    let request = DownloadAttachmentRequest {
        id: id.into(),
        offset,
        length,
        thumbnail,
    };
    let mut stream = client
        .download_attachment(authed(request, token))
        .await?
        .into_inner();
    let Some(download_attachment_response::Part::Header(header)) =
        stream.message().await?.and_then(|m| m.part)
    else {
        panic!("the first message is the header");
    };
    let (mut bytes, mut largest) = (Vec::new(), 0);
    while let Some(message) = stream.message().await? {
        let Some(download_attachment_response::Part::Chunk(chunk)) = message.part else {
            panic!("every later message is a chunk");
        };
        largest = largest.max(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((header, bytes, largest))
}

async fn get(client: &mut Client, token: &str, id: &str) -> Result<Attachment, Status> {
    Ok(client
        .get_attachment(authed(GetAttachmentRequest { id: id.into() }, token))
        .await?
        .into_inner()
        .attachment
        .unwrap())
}

async fn delete(client: &mut Client, token: &str, id: &str) -> Result<(), Status> {
    client
        .delete_attachment(authed(DeleteAttachmentRequest { id: id.into() }, token))
        .await?;
    Ok(())
}

fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(invalid_field(&status).as_deref(), Some(field), "{status:?}");
}

fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
}

async fn every_rpc_and_its_errors(backend: DatabaseBackend, store: Store) {
    let mut stack = TestStack::start(backend).await;
    let media = MediaServer::start(&stack, store, |_| {}).await;
    let (alice, a) = stack.signed_up("alice").await;
    let (_, b) = stack.signed_up("bob").await;
    let mut client = media.client.clone();

    // A small file in one call: the declared type stands when the bytes
    // say nothing, without its parameters.
    let note = put(
        &mut client,
        &a,
        "note.txt",
        "text/plain; charset=utf-8",
        b"hello, world",
    )
    .await
    .unwrap();
    assert_eq!(note.content_type, "text/plain");
    assert_eq!(note.size, 12);
    assert_eq!(note.sha256, sha256(b"hello, world"));
    assert_eq!(note.uploader_id, alice.id);
    assert_eq!(note.id.len(), 32);
    assert!(!note.has_thumbnail);
    assert!(note.created_at.is_some());

    // The bytes beat the declared type; folders leave the name.
    let png = picture(800, 600, ImageFormat::Png);
    let photo = put(&mut client, &a, "C:\\photos\\cat.png", "text/html", &png)
        .await
        .unwrap();
    assert_eq!(photo.filename, "cat.png");
    assert_eq!(photo.content_type, "image/png");
    assert_eq!((photo.width, photo.height), (800, 600));
    assert!(photo.has_thumbnail);
    let (header, thumbnail, _) = download(&mut client, &b, &photo.id, 0, 0, true)
        .await
        .unwrap();
    assert_eq!(header.content_type, "image/jpeg");
    assert_eq!(header.total_size, thumbnail.len() as i64);
    let thumbnail = image::load_from_memory(&thumbnail).unwrap();
    assert_eq!((thumbnail.width(), thumbnail.height()), (320, 240));

    // A client stream of 3.5 MiB, read back by someone else holding the
    // id, whole and in ranges, in chunks of at most 1 MiB.
    let big = noise(3 * MIB + MIB / 2, 7);
    let stored = upload(&mut client, &a, "big.bin", &big, 256 * 1024)
        .await
        .unwrap();
    assert_eq!(stored.size, big.len() as i64);
    assert_eq!(stored.sha256, sha256(&big));
    assert_eq!(stored.content_type, "application/octet-stream");
    let (header, bytes, largest) = download(&mut client, &b, &stored.id, 0, 0, false)
        .await
        .unwrap();
    assert_eq!(header.total_size, big.len() as i64);
    assert_eq!((header.offset, header.length), (0, big.len() as i64));
    assert_eq!(header.attachment.unwrap().sha256, stored.sha256);
    assert!(bytes == big, "the download differs");
    assert!(largest <= MIB, "a chunk of {largest} bytes");
    let (header, bytes, _) = download(&mut client, &b, &stored.id, 1_000_000, 2_500_000, false)
        .await
        .unwrap();
    assert_eq!((header.offset, header.length), (1_000_000, 2_500_000));
    assert!(bytes == big[1_000_000..3_500_000]);
    let end = big.len() as i64;
    let (header, bytes, _) = download(&mut client, &b, &stored.id, end - 10, 100, false)
        .await
        .unwrap();
    assert_eq!(header.length, 10);
    assert!(bytes == big[big.len() - 10..]);
    let (header, bytes, _) = download(&mut client, &b, &stored.id, end, 0, false)
        .await
        .unwrap();
    assert_eq!(header.length, 0);
    assert!(bytes.is_empty());
    assert_eq!(get(&mut client, &b, &stored.id).await.unwrap(), stored);

    // Errors.
    let anonymous = client
        .get_attachment(GetAttachmentRequest {
            id: stored.id.clone(),
        })
        .await;
    assert_code(anonymous, Code::Unauthenticated);
    assert_invalid(get(&mut client, &a, "").await, "id");
    assert_code(get(&mut client, &a, "../etc/passwd").await, Code::NotFound);
    assert_code(get(&mut client, &a, &"0".repeat(32)).await, Code::NotFound);
    assert_invalid(put(&mut client, &a, "", "", b"x").await, "filename");
    assert_invalid(
        put(&mut client, &a, "x", "not a type", b"x").await,
        "content_type",
    );
    assert_invalid(
        put(&mut client, &a, "x", "", &vec![0; MIB + 1]).await,
        "content",
    );
    let no_file = client
        .put_attachment(authed(
            PutAttachmentRequest {
                file: None,
                content: Bytes::from_static(b"x"),
            },
            &a,
        ))
        .await;
    assert_invalid(no_file, "file");
    let chunk_first = upload_messages(
        &mut client,
        &a,
        vec![upload_attachment_request::Part::Chunk(Bytes::from_static(
            b"x",
        ))],
    )
    .await;
    assert_invalid(chunk_first, "file");
    let oversized_chunk = upload_messages(
        &mut client,
        &a,
        vec![
            upload_attachment_request::Part::File(file("f", "").unwrap()),
            upload_attachment_request::Part::Chunk(Bytes::from(vec![0; 2 * MIB])),
        ],
    )
    .await;
    assert_invalid(oversized_chunk, "chunk");
    let named_twice = upload_messages(
        &mut client,
        &a,
        vec![
            upload_attachment_request::Part::File(file("f", "").unwrap()),
            upload_attachment_request::Part::File(file("g", "").unwrap()),
        ],
    )
    .await;
    assert_invalid(named_twice, "chunk");
    assert_code(
        download(&mut client, &a, &stored.id, end + 1, 0, false).await,
        Code::OutOfRange,
    );
    assert_invalid(
        download(&mut client, &a, &stored.id, -1, 0, false).await,
        "offset",
    );
    assert_code(
        download(&mut client, &a, &stored.id, 0, 0, true).await,
        Code::NotFound,
    );

    // Deleting: the uploader or an admin, and the bytes go too.
    let files_before = media.objects("files").await;
    assert_code(
        delete(&mut client, &b, &stored.id).await,
        Code::PermissionDenied,
    );
    delete(&mut client, &a, &stored.id).await.unwrap();
    assert_code(get(&mut client, &a, &stored.id).await, Code::NotFound);
    assert_code(
        download(&mut client, &a, &stored.id, 0, 0, false).await,
        Code::NotFound,
    );
    assert_code(delete(&mut client, &a, &stored.id).await, Code::NotFound);
    assert_eq!(media.objects("files").await, files_before - 1);
    assert_eq!(media.objects("thumbnails").await, 1);
    let admin = stack.admin_token.clone();
    delete(&mut client, &admin, &photo.id).await.unwrap();
    assert_eq!(media.objects("thumbnails").await, 0);

    media.stop().await;
    stack.stop().await;
}

async fn limits_and_quota(backend: DatabaseBackend, store: Store) {
    let mut stack = TestStack::start(backend).await;
    let media = MediaServer::start(&stack, store, |args| {
        args.max_bytes = 2 * MIB as u64;
        args.user_quota_bytes = 5 * MIB as u64;
    })
    .await;
    let (_, a) = stack.signed_up("alice").await;
    let (_, b) = stack.signed_up("bob").await;
    let mut client = media.client.clone();

    // One byte over the size limit, in a stream: refused, nothing kept.
    let over = upload(&mut client, &a, "over.bin", &noise(2 * MIB + 1, 1), MIB).await;
    let status = over.expect_err("over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("largest attachment"),
        "{status:?}"
    );
    assert_eq!(media.objects("files").await, 0);

    // The quota: 2 + 2 MiB fit, then only 1 MiB is left.
    let first = upload(&mut client, &a, "1.bin", &noise(2 * MIB, 2), MIB)
        .await
        .unwrap();
    upload(&mut client, &a, "2.bin", &noise(2 * MIB, 3), MIB)
        .await
        .unwrap();
    let status = upload(&mut client, &a, "3.bin", &noise(2 * MIB, 4), MIB)
        .await
        .expect_err("over the quota");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("quota"), "{status:?}");
    // Someone else's quota is their own.
    upload(&mut client, &b, "3.bin", &noise(2 * MIB, 4), MIB)
        .await
        .unwrap();
    // A resumable upload is refused at its beginning.
    let (answers, status) = open_transfer(&mut client, &a, begin("4.bin", 2 * MIB)).await;
    drop(answers);
    assert_eq!(status.unwrap_err().code(), Code::ResourceExhausted);
    // Deleting frees the quota.
    delete(&mut client, &a, &first.id).await.unwrap();
    upload(&mut client, &a, "3.bin", &noise(2 * MIB, 4), MIB)
        .await
        .unwrap();

    media.stop().await;
    stack.stop().await;
}

fn begin(filename: &str, size: usize) -> TransferAttachmentRequest {
    TransferAttachmentRequest {
        step: Some(Step::Begin(BeginTransfer {
            file: file(filename, ""),
            size: size as i64,
        })),
    }
}

fn resume(upload_id: &str) -> TransferAttachmentRequest {
    TransferAttachmentRequest {
        step: Some(Step::Resume(ResumeTransfer {
            upload_id: upload_id.into(),
        })),
    }
}

fn chunk(offset: usize, data: &[u8]) -> TransferAttachmentRequest {
    TransferAttachmentRequest {
        step: Some(Step::Chunk(TransferChunk {
            offset: offset as i64,
            data: Bytes::copy_from_slice(data),
        })),
    }
}

/// A transfer stream: its sender, and its first answer.
async fn open_transfer(
    client: &mut Client,
    token: &str,
    first: TransferAttachmentRequest,
) -> (
    (
        mpsc::Sender<TransferAttachmentRequest>,
        Streaming<TransferAttachmentResponse>,
    ),
    Result<transfer_attachment_response::Step, Status>,
) {
    let (requests, stream) = mpsc::channel(4);
    requests.send(first).await.unwrap();
    let mut answers = client
        .transfer_attachment(authed(ReceiverStream::new(stream), token))
        .await
        .unwrap()
        .into_inner();
    let first = next_answer(&mut answers).await;
    ((requests, answers), first)
}

async fn next_answer(
    answers: &mut Streaming<TransferAttachmentResponse>,
) -> Result<transfer_attachment_response::Step, Status> {
    Ok(answers
        .message()
        .await?
        .and_then(|answer| answer.step)
        .expect("an answer"))
}

async fn a_resumable_transfer_survives_a_cut_stream(backend: DatabaseBackend, store: Store) {
    let mut stack = TestStack::start(backend).await;
    let media = MediaServer::start(&stack, store, |_| {}).await;
    let (alice, a) = stack.signed_up("alice").await;
    let (_, b) = stack.signed_up("bob").await;
    let mut client = media.client.clone();
    let data = noise(5 * MIB + 123, 11);

    // Two chunks, each answered once stored, then the stream is cut.
    let ((requests, mut answers), first) =
        open_transfer(&mut client, &a, begin("film.bin", data.len())).await;
    let Ok(transfer_attachment_response::Step::Status(status)) = first else {
        panic!("a status first: {first:?}");
    };
    assert_eq!((status.received, status.size), (0, data.len() as i64));
    let upload_id = status.upload_id;
    for (index, part) in data.chunks(MIB).take(2).enumerate() {
        requests.send(chunk(index * MIB, part)).await.unwrap();
        let answer = next_answer(&mut answers).await.unwrap();
        assert_eq!(
            answer,
            transfer_attachment_response::Step::Received(((index + 1) * MIB) as i64)
        );
    }
    drop(requests);
    drop(answers);

    // Someone else cannot see it; its owner learns where it stands, and a
    // chunk anywhere else is refused with the right offset.
    let ((_, _), other) = open_transfer(&mut client, &b, resume(&upload_id)).await;
    assert_eq!(other.unwrap_err().code(), Code::NotFound);
    let ((requests, mut answers), first) = open_transfer(&mut client, &a, resume(&upload_id)).await;
    let Ok(transfer_attachment_response::Step::Status(status)) = first else {
        panic!("a status first: {first:?}");
    };
    assert_eq!(status.received, 2 * MIB as i64);
    requests.send(chunk(0, &data[..10])).await.unwrap();
    let refused = next_answer(&mut answers).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains(&format!("stands at {}", 2 * MIB)),
        "{refused:?}"
    );

    // The rest on a new stream: the last answer is the attachment.
    let ((requests, mut answers), _) = open_transfer(&mut client, &a, resume(&upload_id)).await;
    let mut last = None;
    for (index, part) in data.chunks(MIB).enumerate().skip(2) {
        requests.send(chunk(index * MIB, part)).await.unwrap();
        last = Some(next_answer(&mut answers).await.unwrap());
    }
    let Some(transfer_attachment_response::Step::Attachment(attachment)) = last else {
        panic!("the attachment last: {last:?}");
    };
    assert_eq!(attachment.size, data.len() as i64);
    assert_eq!(attachment.sha256, sha256(&data));
    assert_eq!(attachment.uploader_id, alice.id);
    let (_, bytes, _) = download(&mut client, &a, &attachment.id, 0, 0, false)
        .await
        .unwrap();
    assert!(bytes == data, "the download differs");
    assert_eq!(media.objects("uploads").await, 0, "parts are removed");

    // Resuming a finished upload answers its attachment.
    let ((_, _), again) = open_transfer(&mut client, &a, resume(&upload_id)).await;
    assert_eq!(
        again.unwrap(),
        transfer_attachment_response::Step::Attachment(attachment)
    );
    // An empty file completes at once.
    let ((_, _), empty) = open_transfer(&mut client, &a, begin("empty", 0)).await;
    let Ok(transfer_attachment_response::Step::Attachment(empty)) = empty else {
        panic!("an attachment: {empty:?}");
    };
    assert_eq!(
        (empty.size, empty.sha256.as_str()),
        (0, sha256(b"").as_str())
    );
    // A stream that starts with a chunk is refused.
    let ((_, _), headless) = open_transfer(&mut client, &a, chunk(0, b"x")).await;
    assert_invalid(headless, "begin");

    media.stop().await;
    stack.stop().await;
}

async fn unfinished_uploads_expire_with_their_bytes(backend: DatabaseBackend, store: Store) {
    let mut stack = TestStack::start(backend).await;
    let media = MediaServer::start(&stack, store, |args| {
        args.upload_ttl = Duration::from_secs(1);
    })
    .await;
    let (_, a) = stack.signed_up("alice").await;
    let mut client = media.client.clone();
    // A finished upload expires too, and keeps its attachment.
    let ((done, mut done_answers), first) = open_transfer(&mut client, &a, begin("kept", 10)).await;
    let Ok(transfer_attachment_response::Step::Status(finished)) = first else {
        panic!("a status first: {first:?}");
    };
    done.send(chunk(0, &[7; 10])).await.unwrap();
    let Ok(transfer_attachment_response::Step::Attachment(kept)) =
        next_answer(&mut done_answers).await
    else {
        panic!("the attachment");
    };
    drop((done, done_answers));
    let data = noise(3 * MIB, 5);
    let ((requests, mut answers), first) =
        open_transfer(&mut client, &a, begin("gone.bin", data.len())).await;
    let Ok(transfer_attachment_response::Step::Status(status)) = first else {
        panic!("a status first: {first:?}");
    };
    requests.send(chunk(0, &data[..MIB])).await.unwrap();
    next_answer(&mut answers).await.unwrap();
    drop((requests, answers));
    assert_eq!(media.objects("uploads").await, 1);

    // Once its TTL has passed the upload is unknown, and the sweeper
    // removes its part.
    let expired = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ((_, _), resumed) = open_transfer(&mut client, &a, resume(&status.upload_id)).await;
            let gone = resumed.is_err_and(|status| status.code() == Code::NotFound);
            let ((_, _), finished_again) =
                open_transfer(&mut client, &a, resume(&finished.upload_id)).await;
            let finished_gone = finished_again.is_err_and(|status| status.code() == Code::NotFound);
            if gone && finished_gone && media.objects("uploads").await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(expired.is_ok(), "the uploads and the part are removed");
    assert_eq!(get(&mut client, &a, &kept.id).await.unwrap().size, 10);

    media.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_images_are_stored_as_plain_files() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let media = MediaServer::start(&stack, Store::Folder, |_| {}).await;
    let (_, a) = stack.signed_up("alice").await;
    let mut client = media.client.clone();

    // Every raster format gets its thumbnail.
    for (format, name) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/gif"),
        (ImageFormat::WebP, "image/webp"),
    ] {
        let attachment = put(&mut client, &a, "p", "", &picture(400, 1000, format))
            .await
            .unwrap();
        assert_eq!(attachment.content_type, name);
        assert_eq!((attachment.width, attachment.height), (400, 1000), "{name}");
        assert!(attachment.has_thumbnail, "{name}");
    }

    // A header claiming 100,000 x 100,000 pixels (a decompression bomb).
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bomb.extend(100_000u32.to_be_bytes());
    bomb.extend(100_000u32.to_be_bytes());
    bomb.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    bomb.extend(vec![0; 4096]);
    // Half a PNG, and a PNG signature in front of a JPEG.
    let png = picture(300, 300, ImageFormat::Png);
    let truncated = png[..png.len() / 2].to_vec();
    let mut lying = png[..8].to_vec();
    lying.extend(picture(300, 300, ImageFormat::Jpeg));
    for (name, bytes) in [("bomb", bomb), ("truncated", truncated), ("lying", lying)] {
        let stored = tokio::time::timeout(
            Duration::from_secs(30),
            put(&mut client, &a, name, "", &bytes),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} hangs"))
        .unwrap_or_else(|status| panic!("{name}: {status:?}"));
        assert_eq!(stored.content_type, "image/png", "{name}");
        assert_eq!((stored.width, stored.height), (0, 0), "{name}");
        assert!(!stored.has_thumbnail, "{name}");
        assert_eq!(stored.sha256, sha256(&bytes), "{name}");
    }
    // The service is still there.
    put(&mut client, &a, "after", "", b"still here")
        .await
        .unwrap();

    media.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_stream_both_ways_in_flat_memory() {
    let mut stack = TestStack::start(DatabaseBackend::Sqlite).await;
    let (_, token) = stack.signed_up("alice").await;
    let auth = stack.auth_url().to_string();
    let process = RunningBinary::start(
        &binary("parley-media"),
        &[
            ("MEDIA_GRPC_ADDR", "127.0.0.1:0"),
            ("MEDIA_ADMIN_ADDR", "127.0.0.1:0"),
            ("AUTH_URL", auth.as_str()),
            ("MEDIA_MAX_BYTES", "209715200"),
        ],
        1,
    )
    .await;
    wait_until_ready(process.admin_addrs[0]).await;
    let pid = process.child.id().unwrap();
    let mut client = MediaServiceClient::new(channel(process.grpc_addrs[0]).await);
    put(&mut client, &token, "warm-up", "", &noise(MIB, 1))
        .await
        .unwrap();
    let before = rss_kib(pid);

    // 100 MiB made as they are sent, never whole in this process either.
    const CHUNKS: u64 = 100;
    let chunk_of = |i: u64| Bytes::from(noise(MIB, i + 100));
    let mut hasher = Sha256::new();
    for i in 0..CHUNKS {
        hasher.update(chunk_of(i));
    }
    let expected = format!("{:x}", hasher.finalize());
    let done = tokio_util::sync::CancellationToken::new();
    let peak = watch_memory(pid, done.clone());
    let messages = futures_util::stream::iter(
        std::iter::once(upload_attachment_request::Part::File(
            file("big.bin", "").unwrap(),
        ))
        .chain((0..CHUNKS).map(move |i| upload_attachment_request::Part::Chunk(chunk_of(i))))
        .map(|part| UploadAttachmentRequest { part: Some(part) }),
    );
    let stored = client
        .upload_attachment(authed(messages, &token))
        .await
        .unwrap()
        .into_inner()
        .attachment
        .unwrap();
    done.cancel();
    let upload_peak = peak.await.unwrap();
    assert_eq!(stored.size, (CHUNKS as usize * MIB) as i64);
    assert_eq!(stored.sha256, expected);

    let done = tokio_util::sync::CancellationToken::new();
    let peak = watch_memory(pid, done.clone());
    let request = DownloadAttachmentRequest {
        id: stored.id.clone(),
        ..Default::default()
    };
    let mut stream = client
        .download_attachment(authed(request, &token))
        .await
        .unwrap()
        .into_inner();
    let mut hasher = Sha256::new();
    let mut size = 0;
    while let Some(message) = stream.next().await {
        if let Some(download_attachment_response::Part::Chunk(chunk)) = message.unwrap().part {
            size += chunk.len();
            hasher.update(&chunk);
        }
    }
    done.cancel();
    let download_peak = peak.await.unwrap();
    assert_eq!(size, CHUNKS as usize * MIB);
    assert_eq!(format!("{:x}", hasher.finalize()), expected);

    // A few chunks' worth of growth at most, against 100 MiB moved.
    let grown = upload_peak.max(download_peak).saturating_sub(before);
    println!(
        "media RSS: {before} KiB before, peak {upload_peak} KiB uploading and {download_peak} KiB downloading 100 MiB"
    );
    assert!(
        grown < 40 * 1024,
        "media grew by {grown} KiB moving 100 MiB"
    );
    drop(process);
    stack.stop().await;
}
