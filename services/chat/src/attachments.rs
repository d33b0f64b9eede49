//! Attachments on messages: a send names attachment ids; before the
//! message is stored each is looked up in the media service, must have
//! been uploaded by the sender, and its metadata (name, type, size,
//! dimensions) is stored with the message so members can show it without
//! asking media (README, "Attachments").

use futures_util::future::try_join_all;
use parley_proto::{
    chat::v1::MessageAttachment,
    media::v1::{GetAttachmentRequest, media_service_client::MediaServiceClient},
};
use parley_runtime::client::ClientChannel;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::error::Error;

/// Most attachments one message carries.
pub(crate) const MAX_PER_MESSAGE: usize = 10;

/// Checks the attachment ids of a send where it enters: at most
/// [`MAX_PER_MESSAGE`], each shaped like a media id (32 lowercase hex
/// digits), none twice. The answer holds only the ids; [`Media::resolve`]
/// fills in the rest.
///
/// # Errors
/// INVALID_ARGUMENT naming `attachments`.
pub(crate) fn parse_ids(ids: Vec<String>) -> Result<Vec<MessageAttachment>, Error> {
    if ids.len() > MAX_PER_MESSAGE {
        return Err(Error::invalid(
            "attachments",
            format!(
                "has {} ids; a message carries at most {MAX_PER_MESSAGE}",
                ids.len()
            ),
        ));
    }
    let mut parsed: Vec<MessageAttachment> = Vec::with_capacity(ids.len());
    for id in ids {
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(Error::invalid(
                "attachments",
                "each id must be an attachment id (32 lowercase hex digits)",
            ));
        }
        if parsed.iter().any(|seen| seen.id == id) {
            return Err(Error::invalid(
                "attachments",
                format!("{id} is given twice"),
            ));
        }
        parsed.push(MessageAttachment {
            id,
            ..MessageAttachment::default()
        });
    }
    Ok(parsed)
}

/// The media service, as chat asks it about attachments. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Media {
    client: MediaServiceClient<ClientChannel>,
}

impl Media {
    /// A client over `channel` (see `MEDIA_URL`).
    pub(crate) fn new(channel: ClientChannel) -> Self {
        Self {
            client: MediaServiceClient::new(channel),
        }
    }

    /// Fills in each attachment's metadata, asking media with the sender's
    /// own token, so media's rule (a valid token and the id) applies.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for an id media does not know or that another user
    /// uploaded; UNAUTHENTICATED when there is no token (a gateway's send
    /// that did not bring one) or media refuses it; UNAVAILABLE when media
    /// cannot be reached.
    pub(crate) async fn resolve(
        &self,
        token: &str,
        sender_id: &str,
        attachments: &mut [MessageAttachment],
    ) -> Result<(), Error> {
        if token.is_empty() {
            return Err(Error::Unauthenticated(
                "a send that names attachments needs the session's access token".into(),
            ));
        }
        let bearer: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Unauthenticated("the access token is malformed".into()))?;
        let lookups = attachments.iter().map(|attachment| {
            let mut client = self.client.clone();
            let mut request = Request::new(GetAttachmentRequest {
                id: attachment.id.clone(),
            });
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            async move {
                let found = client
                    .get_attachment(request)
                    .await
                    .map_err(|status| from_media(&attachment.id, &status))?
                    .into_inner()
                    .attachment
                    .ok_or_else(|| {
                        Error::Unavailable("the media service answered no attachment".into())
                    })?;
                if found.uploader_id != sender_id {
                    return Err(Error::invalid(
                        "attachments",
                        format!("{} was uploaded by someone else", attachment.id),
                    ));
                }
                Ok(MessageAttachment {
                    id: found.id,
                    filename: found.filename,
                    content_type: found.content_type,
                    size: found.size,
                    width: found.width,
                    height: found.height,
                })
            }
        });
        let found = try_join_all(lookups).await?;
        for (attachment, found) in attachments.iter_mut().zip(found) {
            *attachment = found;
        }
        Ok(())
    }
}

/// What a failed lookup means for the send.
fn from_media(id: &str, status: &tonic::Status) -> Error {
    match status.code() {
        Code::NotFound | Code::InvalidArgument => {
            Error::invalid("attachments", format!("{id} is not an attachment"))
        }
        Code::Unauthenticated => Error::Unauthenticated(status.message().to_owned()),
        _ => Error::Unavailable(format!(
            "the media service could not check attachment {id}: {}",
            status.message()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn ids_are_checked_at_the_edge() {
        assert!(parse_ids(Vec::new()).unwrap().is_empty());
        let parsed = parse_ids(vec![ID.to_owned()]).unwrap();
        assert_eq!(parsed[0].id, ID);

        for bad in ["", "xyz", &ID.to_uppercase(), &format!("{ID}0")] {
            let err = parse_ids(vec![bad.to_owned()]).unwrap_err();
            assert!(err.to_string().starts_with("attachments:"), "{bad}: {err}");
        }
        let twice = parse_ids(vec![ID.to_owned(), ID.to_owned()]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");

        let many: Vec<String> = (0..=MAX_PER_MESSAGE).map(|i| format!("{i:032x}")).collect();
        assert!(parse_ids(many[..MAX_PER_MESSAGE].to_vec()).is_ok());
        let err = parse_ids(many).unwrap_err();
        assert!(err.to_string().contains("at most 10"), "{err}");
    }

    #[test]
    fn media_failures_say_what_to_do() {
        let not_found = from_media(ID, &tonic::Status::not_found("no"));
        assert_eq!(tonic::Status::from(not_found).code(), Code::InvalidArgument);
        let down = from_media(ID, &tonic::Status::unavailable("down"));
        assert_eq!(tonic::Status::from(down).code(), Code::Unavailable);
        let refused = from_media(ID, &tonic::Status::unauthenticated("expired"));
        assert_eq!(tonic::Status::from(refused).code(), Code::Unauthenticated);
    }
}
