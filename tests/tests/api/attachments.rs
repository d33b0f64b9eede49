//! Attachments end to end through the gateways, on both topologies: the
//! REST routes (raw and multipart uploads, downloads with their headers,
//! ranges, revalidation, thumbnails, deletion, limits), messages carrying
//! attachments to members on both gateways and in history, and a 100 MiB
//! file through the gateway in flat memory.

use std::time::Duration;

use image::ImageFormat;
use parley_tests::{
    DatabaseBackend,
    chat::room_id,
    gateway::{Account, Deployment, Settings, Topology, Ws, http_json},
    media::{noise, picture, watch_memory},
    on_both_backends, on_both_topologies, rss_kib,
};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

on_both_topologies!(
    messages_carry_attachments_to_both_gateways_and_history,
    every_attachment_route_and_its_errors,
);
on_both_backends!(grpc_sends_carry_attachments);

fn url(deployment: &Deployment, gateway: usize, path: &str) -> String {
    format!("http://{}{path}", deployment.gateway(gateway))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Uploads `bytes` as a raw body and returns the answer's status and JSON.
async fn upload_raw(
    deployment: &Deployment,
    account: &Account,
    filename: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let response = client()
        .post(url(
            deployment,
            0,
            &format!("/api/v1/attachments?filename={filename}"),
        ))
        .bearer_auth(&account.access_token)
        .header("Content-Type", content_type)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn uploaded(deployment: &Deployment, account: &Account, name: &str, bytes: Vec<u8>) -> Value {
    let (status, body) = upload_raw(deployment, account, name, "", bytes).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// The next `message` or `error` frame.
async fn next_message_or_error(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.next().await;
        if frame.get("message").is_some() || frame.get("error").is_some() {
            return frame;
        }
    }
}

async fn messages_carry_attachments_to_both_gateways_and_history(topology: Topology) {
    let (deployment, alice, bob) =
        Deployment::start_with_pair(topology, &Settings::default()).await;
    let png = picture(640, 480, ImageFormat::Png);
    let image = uploaded(&deployment, &alice, "cat.png", png.clone()).await;
    assert_eq!(image["content_type"], "image/png");
    assert_eq!(
        (image["width"].as_i64(), image["height"].as_i64()),
        (Some(640), Some(480))
    );
    assert_eq!(image["has_thumbnail"], true);
    let (status, notes) = upload_raw(
        &deployment,
        &alice,
        "notes.txt",
        "text/plain; charset=utf-8",
        b"plain words".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{notes}");
    let bobs = uploaded(&deployment, &bob, "bob.txt", b"bob's own".to_vec()).await;

    let room = room_id("attach");
    let mut a = deployment.ws(0, &alice).await;
    let mut b = deployment.ws(1, &bob).await;
    a.join(&room, 0).await;
    b.join(&room, 0).await;

    // Only attachments, no text.
    a.send(json!({ "send": {
        "room_id": room, "content": "", "client_id": "pics",
        "attachments": [image["id"], notes["id"]],
    }}))
    .await;
    let ack = a.next_kind("ack").await;
    assert_eq!(ack["client_id"], "pics");
    let expected = json!([
        { "id": image["id"], "filename": "cat.png", "content_type": "image/png",
          "size": png.len(), "width": 640, "height": 480 },
        { "id": notes["id"], "filename": "notes.txt", "content_type": "text/plain",
          "size": 11, "width": 0, "height": 0 },
    ]);
    for ws in [&mut a, &mut b] {
        let message = ws.next_kind("message").await;
        assert_eq!(message["content"], "");
        assert_eq!(message["attachments"], expected);
    }
    a.say(&room, "words only", "words").await;
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.next_kind("message").await["attachments"], json!([]));
    }

    // Each way a send's attachments can be wrong.
    let many: Vec<String> = (0..11).map(|i| format!("{i:032x}")).collect();
    for (attachments, content, says) in [
        (json!([bobs["id"]]), "x", "someone else"),
        (
            json!(["0123456789abcdef0123456789abcdef"]),
            "x",
            "not an attachment",
        ),
        (json!(["../etc/passwd"]), "x", "attachment id"),
        (json!([image["id"], image["id"]]), "x", "twice"),
        (json!(many), "x", "at most 10"),
        (json!([]), "", "content"),
    ] {
        a.send(json!({ "send": {
            "room_id": room, "content": content, "client_id": "bad", "attachments": attachments,
        }}))
        .await;
        let frame = next_message_or_error(&mut a).await;
        let error = &frame["error"];
        assert_eq!(error["code"], "INVALID_ARGUMENT", "{frame}");
        assert_eq!(error["client_id"], "bad");
        assert!(
            error["message"].as_str().unwrap().contains(says),
            "{says}: {error}"
        );
    }

    // History carries them too, for everyone in the room.
    let history = http_json(
        deployment.gateway(1),
        "GET",
        &format!("/api/v1/rooms/{room}/messages"),
        Some(&bob.access_token),
        &Value::Null,
    )
    .await;
    assert_eq!(history.status, 200, "{}", history.body);
    let messages = history.json()["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["attachments"], expected);
    assert_eq!(messages[1]["attachments"], json!([]));

    // A replay carries them as well.
    a.send(json!({ "send": {
        "room_id": room, "content": "again", "client_id": "again",
        "attachments": [notes["id"]],
    }}))
    .await;
    a.next_kind("ack").await;
    let mut replay = deployment.ws(0, &bob).await;
    replay
        .send(json!({ "join": { "room_id": room, "since_seq": 2 } }))
        .await;
    let replayed = replay.next_kind("message").await;
    assert_eq!(replayed["seq"], 3);
    assert_eq!(replayed["attachments"], json!([expected[1]]));

    // A member downloads the image by the id the message carried.
    let bytes = client()
        .get(url(
            &deployment,
            1,
            &format!(
                "/api/v1/attachments/{}?token={}",
                expected[0]["id"].as_str().unwrap(),
                bob.access_token
            ),
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), png.as_slice());

    a.close().await;
    b.close().await;
    replay.close().await;
    deployment.stop().await;
}

async fn every_attachment_route_and_its_errors(topology: Topology) {
    let settings = Settings {
        media_max_bytes: 64 * 1024,
        ..Settings::default()
    };
    let (deployment, alice, bob) = Deployment::start_with_pair(topology, &settings).await;
    let http = client();
    let at = |path: &str| url(&deployment, 1, path);

    // No token, no upload.
    let refused = http
        .post(at("/api/v1/attachments?filename=x"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    // A raw upload: sniffed, hashed, measured.
    let png = picture(200, 100, ImageFormat::Png);
    let image = uploaded(&deployment, &alice, "dot.png", png.clone()).await;
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(image["sha256"], format!("{:x}", Sha256::digest(&png)));
    assert_eq!(image["size"], png.len());
    assert_eq!(image["uploader_id"], alice.user_id);

    // A multipart upload takes the part's own name and type.
    let page = "<html><body><script>document.title='owned'</script></body></html>";
    let form = reqwest::multipart::Form::new()
        .text("comment", "ignored")
        .part(
            "file",
            reqwest::multipart::Part::bytes(page.as_bytes().to_vec())
                .file_name("page.html")
                .mime_str("text/html")
                .unwrap(),
        );
    let response = http
        .post(at("/api/v1/attachments"))
        .bearer_auth(&alice.access_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let html: Value = response.json().await.unwrap();
    assert_eq!(html["filename"], "page.html");
    assert_eq!(html["content_type"], "text/html");
    let form = reqwest::multipart::Form::new().text("other", "no file here");
    let response = http
        .post(at("/api/v1/attachments"))
        .bearer_auth(&alice.access_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let svg = uploaded(
        &deployment,
        &alice,
        "logo.svg",
        br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec(),
    )
    .await;

    // The image, whole, by header token, with every header of the contract.
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "image/png");
    assert_eq!(header("content-length"), png.len().to_string());
    let etag = format!("\"{}\"", image["sha256"].as_str().unwrap());
    assert_eq!(header("etag"), etag);
    assert_eq!(
        header("cache-control"),
        "private, max-age=31536000, immutable"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(
        header("content-disposition"),
        "inline; filename=\"dot.png\""
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), png.as_slice());

    // HTML and SVG are downloads that cannot run as pages of this origin.
    for (file, name) in [(&html, "page.html"), (&svg, "logo.svg")] {
        let response = http
            .get(at(&format!(
                "/api/v1/attachments/{}?token={}",
                file["id"].as_str().unwrap(),
                alice.access_token
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let headers = response.headers();
        assert_eq!(
            headers["content-disposition"],
            format!("attachment; filename=\"{name}\"").as_str()
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
    }

    // Ranges, and one past the end.
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&bob.access_token)
        .header("Range", "bytes=8-23")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes 8-23/{}", png.len()).as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &png[8..24]);
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&bob.access_token)
        .header("Range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &png[png.len() - 5..]
    );
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&bob.access_token)
        .header("Range", format!("bytes={}-", png.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 416);
    assert_eq!(
        response.headers()["content-range"],
        format!("bytes */{}", png.len()).as_str()
    );

    // Revalidation.
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&bob.access_token)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 304);
    assert!(response.bytes().await.unwrap().is_empty());

    // Thumbnails: the image's, none for a text file.
    let response = http
        .get(at(&format!(
            "/api/v1/attachments/{id}/thumbnail?token={}",
            bob.access_token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let thumbnail = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert!(content_type == "image/jpeg" || content_type == "image/png");
    assert_eq!((thumbnail.width(), thumbnail.height()), (200, 100));
    let response = http
        .get(at(&format!(
            "/api/v1/attachments/{}/thumbnail?token={}",
            html["id"].as_str().unwrap(),
            bob.access_token
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    // Bad tokens and unknown ids.
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}?token=forged")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = http
        .get(at("/api/v1/attachments/00000000000000000000000000000000"))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    // Over MEDIA_MAX_BYTES: 413, and nothing kept.
    let (status, body) = upload_raw(
        &deployment,
        &alice,
        "big.bin",
        "application/octet-stream",
        vec![7; 100 * 1024],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");

    // Deleting: not bob's to delete; alice's, then gone.
    let delete = |token: &str| {
        http.delete(at(&format!("/api/v1/attachments/{id}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        delete(&bob.access_token).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(
        delete(&alice.access_token).await.unwrap().status().as_u16(),
        204
    );
    assert_eq!(
        delete(&alice.access_token).await.unwrap().status().as_u16(),
        404
    );
    let response = http
        .get(at(&format!("/api/v1/attachments/{id}")))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);

    deployment.stop().await;
}

/// 100 MiB up and down through the all-in-one's gateway (gateway and media
/// in the one process whose memory is watched), never whole in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_through_the_gateway_in_flat_memory() {
    const MIB: usize = 1024 * 1024;
    const CHUNKS: u64 = 100;
    let settings = Settings {
        media_max_bytes: 200 * MIB as u64,
        ..Settings::default()
    };
    let mut deployment = Deployment::all_in_one(&settings, &[]).await;
    let alice = deployment
        .sign_up(&parley_tests::gateway::username("alice"))
        .await;
    let pid = deployment.process().unwrap().child.id().unwrap();
    uploaded(&deployment, &alice, "warm-up.bin", noise(MIB, 1)).await;
    let before = rss_kib(pid);

    let mut hasher = Sha256::new();
    for i in 0..CHUNKS {
        hasher.update(noise(MIB, i + 100));
    }
    let expected = format!("{:x}", hasher.finalize());
    let done = tokio_util::sync::CancellationToken::new();
    let peak = watch_memory(pid, done.clone());
    // Made as they are sent, never whole in this process either.
    let body = futures_util::stream::iter(
        (0..CHUNKS).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(noise(MIB, i + 100)))),
    );
    let response = client()
        .post(url(&deployment, 0, "/api/v1/attachments?filename=big.bin"))
        .bearer_auth(&alice.access_token)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let stored: Value = response.json().await.unwrap();
    done.cancel();
    let upload_peak = peak.await.unwrap();
    assert_eq!(stored["size"], CHUNKS * MIB as u64);
    assert_eq!(stored["sha256"], expected);

    let done = tokio_util::sync::CancellationToken::new();
    let peak = watch_memory(pid, done.clone());
    let mut response = client()
        .get(url(
            &deployment,
            0,
            &format!("/api/v1/attachments/{}", stored["id"].as_str().unwrap()),
        ))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut hasher = Sha256::new();
    let mut size = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        size += chunk.len();
        hasher.update(&chunk);
    }
    done.cancel();
    let download_peak = peak.await.unwrap();
    assert_eq!(size, CHUNKS as usize * MIB);
    assert_eq!(format!("{:x}", hasher.finalize()), expected);

    let grown = upload_peak.max(download_peak).saturating_sub(before);
    println!(
        "parley RSS: {before} KiB before, peak {upload_peak} KiB uploading and {download_peak} KiB downloading 100 MiB through the gateway"
    );
    assert!(
        grown < 40 * 1024,
        "parley grew by {grown} KiB moving 100 MiB"
    );
    deployment.stop().await;
}

/// Sends with attachments over chat's own API, on Postgres (two replicas
/// and Redis) and on SQLite: `SendMessage` and the `Chat` stream check the
/// ids against media, store the metadata once (a retry gets the stored
/// message, attachments included) and carry it in frames and history.
async fn grpc_sends_carry_attachments(backend: DatabaseBackend) {
    use parley_proto::{
        chat::v1::{
            GetChatHistoryRequest, JoinRoomRequest, Send, SendMessageRequest,
            chat_request::Frame as In, chat_response::Frame as Out,
        },
        media::v1::{FileInfo, PutAttachmentRequest},
    };
    use parley_tests::{authed, chat::ChatCluster};
    use tonic::Code;

    let (mut cluster, media) = ChatCluster::start_with_media(backend).await;
    let (alice, alice_token) = cluster.stack.signed_up("alice").await;
    let (_, bob_token) = cluster.stack.signed_up("bob").await;
    let put = |token: String, name: &'static str, bytes: Vec<u8>| {
        let mut client = media.client.clone();
        async move {
            let request = PutAttachmentRequest {
                file: Some(FileInfo {
                    filename: name.into(),
                    content_type: String::new(),
                }),
                content: bytes.into(),
            };
            client
                .put_attachment(authed(request, &token))
                .await
                .unwrap()
                .into_inner()
                .attachment
                .unwrap()
        }
    };
    let image = put(
        alice_token.clone(),
        "a.gif",
        picture(30, 20, ImageFormat::Gif),
    )
    .await;
    let bobs = put(bob_token.clone(), "b.bin", vec![1, 2, 3]).await;
    assert_eq!(image.uploader_id, alice.id);

    let room = room_id("grpc-attach");
    let mut client = cluster.client(1);
    client
        .join_room(authed(
            JoinRoomRequest {
                room_id: room.clone(),
                ..JoinRoomRequest::default()
            },
            &alice_token,
        ))
        .await
        .unwrap();
    let mut watcher = cluster.connect(0, &alice_token).await;
    watcher.join(&room, 0).await;

    let send = |attachments: Vec<String>, client_id: &str| SendMessageRequest {
        room_id: room.clone(),
        content: String::new(),
        client_id: client_id.into(),
        reply_to: 0,
        attachments,
    };
    let stored = client
        .send_message(authed(send(vec![image.id.clone()], "one"), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    let carried = &stored.attachments;
    assert_eq!(carried.len(), 1);
    assert_eq!(
        (
            carried[0].id.as_str(),
            carried[0].filename.as_str(),
            carried[0].content_type.as_str(),
            carried[0].width,
            carried[0].height
        ),
        (image.id.as_str(), "a.gif", "image/gif", 30, 20)
    );
    assert_eq!(watcher.next_message().await.attachments, stored.attachments);

    // A retry (on the other replica) is the stored message, attachments
    // and all.
    let retried = cluster
        .client(0)
        .send_message(authed(send(vec![image.id.clone()], "one"), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(
        (retried.seq, &retried.attachments),
        (1, &stored.attachments)
    );

    // The stream checks them the same way.
    watcher
        .send_frame(In::Send(Send {
            room_id: room.clone(),
            content: "caption".into(),
            client_id: "two".into(),
            reply_to: 1,
            attachments: vec![image.id.clone()],
        }))
        .await;
    let second = watcher.next_message().await;
    assert_eq!(
        (second.reply_to, &second.attachments),
        (1, &stored.attachments)
    );
    watcher
        .send_frame(In::Send(Send {
            room_id: room.clone(),
            content: "not mine".into(),
            client_id: "three".into(),
            reply_to: 0,
            attachments: vec![bobs.id.clone()],
        }))
        .await;
    let error = watcher
        .next_matching(|frame| match frame {
            Out::Error(error) => Some(error),
            _ => None,
        })
        .await;
    assert_eq!(
        (error.code.as_str(), error.client_id.as_str()),
        ("INVALID_ARGUMENT", "three")
    );

    let refused = client
        .send_message(authed(send(vec![bobs.id.clone()], "four"), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("someone else"), "{refused:?}");
    let refused = client
        .send_message(authed(send(Vec::new(), "five"), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // History, from the replica that stored neither.
    let mut pages = cluster
        .client(0)
        .get_chat_history(authed(
            GetChatHistoryRequest {
                room_id: room.clone(),
                limit: 10,
                before_seq: 0,
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut history = Vec::new();
    while let Some(page) = pages.message().await.unwrap() {
        history.extend(page.messages);
    }
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|m| m.attachments == stored.attachments));

    // A gateway's session: chat keeps no token for it, so a send naming
    // attachments brings the session's token along, and without one media
    // is not asked.
    {
        use parley_proto::chat::v1::{
            ChatRequest, GatewayStreamRequest, Join, OpenSession, SessionRequest,
            gateway_stream_request::Kind as GwIn, gateway_stream_response::Kind as GwOut,
        };
        let (requests, receiver) = tokio::sync::mpsc::channel(8);
        let mut responses = cluster
            .client(1)
            .gateway_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        let up = |kind: GwIn| GatewayStreamRequest { kind: Some(kind) };
        let frame = |frame: In, access_token: &str| {
            up(GwIn::SessionRequest(SessionRequest {
                session_id: 1,
                request: Some(ChatRequest { frame: Some(frame) }),
                access_token: access_token.into(),
                ..SessionRequest::default()
            }))
        };
        let sent = |client_id: &str| {
            In::Send(Send {
                room_id: room.clone(),
                content: String::new(),
                client_id: client_id.into(),
                reply_to: 0,
                attachments: vec![image.id.clone()],
            })
        };
        for request in [
            up(GwIn::OpenSession(OpenSession {
                session_id: 1,
                access_token: alice_token.clone(),
            })),
            frame(
                In::Join(Join {
                    room_id: room.clone(),
                    ..Join::default()
                }),
                "",
            ),
            frame(sent("without"), ""),
            frame(sent("with"), &alice_token),
        ] {
            requests.send(request).await.unwrap();
        }
        let (mut refused, mut acked) = (None, None);
        while refused.is_none() || acked.is_none() {
            let response =
                tokio::time::timeout(parley_tests::chat::FRAME_TIMEOUT, responses.message())
                    .await
                    .expect("a frame in time")
                    .unwrap()
                    .expect("the stream is open");
            match response.kind {
                Some(GwOut::SessionResponse(response)) => {
                    match response.response.and_then(|r| r.frame) {
                        Some(Out::Error(error)) => refused = Some(error),
                        Some(Out::Ack(ack)) => acked = Some(ack),
                        _ => {}
                    }
                }
                Some(GwOut::SessionClosed(closed)) => panic!("closed: {closed:?}"),
                _ => {}
            }
        }
        let (refused, acked) = (refused.unwrap(), acked.unwrap());
        assert_eq!(
            (refused.code.as_str(), refused.client_id.as_str()),
            ("UNAUTHENTICATED", "without")
        );
        assert_eq!(acked.client_id, "with");
        let message = watcher.next_message().await;
        assert_eq!(
            (message.seq, &message.attachments),
            (acked.seq, &stored.attachments)
        );
    }

    // Without media, a send with attachments is UNAVAILABLE (retry later),
    // and nothing is stored.
    media.stop().await;
    let unavailable = client
        .send_message(authed(send(vec![image.id.clone()], "six"), &alice_token))
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");

    watcher.close();
    cluster.stop().await;
}
