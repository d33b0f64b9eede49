//! What kind of call a gRPC path is, read from the descriptor sets.
//!
//! The metrics layer sees only `/package.Service/Method`; whether that is
//! unary or a stream comes from the same descriptors reflection serves, so
//! the table never drifts from the contracts.

use std::{collections::HashMap, sync::OnceLock};

use prost::Message as _;

/// `grpc_type` as go-grpc-prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl CallKind {
    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }

    /// Whether responses stream (server or bidi): such calls may stay open
    /// indefinitely and are cut when the server drains.
    pub fn streams_responses(self) -> bool {
        matches!(self, Self::ServerStream | Self::BidiStream)
    }

    /// Whether either side streams.
    pub fn is_streaming(self) -> bool {
        self != Self::Unary
    }
}

/// The labels of one method.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    /// Fully qualified service, e.g. `parley.user.v1.UserService`.
    pub service: &'static str,
    /// Method name, e.g. `GetUser`.
    pub method: &'static str,
    /// Unary or which kind of stream.
    pub kind: CallKind,
}

const UNKNOWN: MethodInfo = MethodInfo {
    service: "unknown",
    method: "unknown",
    kind: CallKind::Unary,
};

/// Looks a request path up; paths of no known method share the `unknown`
/// labels, so scanners cannot blow up metric cardinality.
pub fn lookup(path: &str) -> MethodInfo {
    table().get(path).copied().unwrap_or(UNKNOWN)
}

fn table() -> &'static HashMap<String, MethodInfo> {
    static TABLE: OnceLock<HashMap<String, MethodInfo>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = HashMap::new();
        for encoded in [
            parley_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            // These are build-time constants; a decode failure is a build bug
            // and leaves the affected methods labelled `unknown`.
            let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                    // Leaked once per method at start: a small, fixed set,
                    // and metric labels want `'static` strings.
                    let service_label: &'static str =
                        Box::leak(service_name.clone().into_boxed_str());
                    for method in service.method {
                        let method_name = method.name.unwrap_or_default();
                        let kind = match (
                            method.client_streaming.unwrap_or(false),
                            method.server_streaming.unwrap_or(false),
                        ) {
                            (false, false) => CallKind::Unary,
                            (true, false) => CallKind::ClientStream,
                            (false, true) => CallKind::ServerStream,
                            (true, true) => CallKind::BidiStream,
                        };
                        let path = format!("/{service_name}/{method_name}");
                        let method_label: &'static str = Box::leak(method_name.into_boxed_str());
                        table.insert(
                            path,
                            MethodInfo {
                                service: service_label,
                                method: method_label,
                                kind,
                            },
                        );
                    }
                }
            }
        }
        table
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_every_kind_of_call() {
        let get = lookup("/parley.user.v1.UserService/GetUser");
        assert_eq!(
            (get.service, get.method, get.kind),
            ("parley.user.v1.UserService", "GetUser", CallKind::Unary)
        );
        assert_eq!(
            lookup("/parley.user.v1.UserService/ListUsers").kind,
            CallKind::ServerStream
        );
        assert_eq!(
            lookup("/parley.user.v1.UserService/BatchCreateUsers").kind,
            CallKind::ClientStream
        );
        assert_eq!(
            lookup("/parley.chat.v1.ChatService/Chat").kind,
            CallKind::BidiStream
        );
        assert_eq!(
            lookup("/grpc.health.v1.Health/Watch").kind,
            CallKind::ServerStream
        );
        assert_eq!(
            lookup("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").kind,
            CallKind::BidiStream
        );
        assert_eq!(lookup("/wp-login.php").service, "unknown");
    }
}
