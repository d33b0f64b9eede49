//! The Ed25519 keys that sign access tokens.
//!
//! Keys come from `AUTH_JWT_PRIVATE_KEY`, `AUTH_JWT_PRIVATE_KEY_FILE` or, on
//! a laptop, a key generated once into `data/jwt-ed25519.pem`. Several PEM
//! blocks may be given: the first signs, the rest are only published, so a
//! rotation is "prepend the new key, drop the old one after a token
//! lifetime".

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{
        DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parley_proto::auth::v1::PublicKey;
use secrecy::ExposeSecret as _;
use sha2::{Digest as _, Sha256};

use parley_runtime::config::BadValue;

use crate::config::{AuthArgs, DEFAULT_KEY_FILE};

/// One key: how to sign with it and how others verify it.
struct KeyPair {
    kid: String,
    encoding: EncodingKey,
    public: PublicKey,
}

/// The signing key and the published verification keys.
pub struct SigningKeys {
    keys: Vec<KeyPair>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SigningKeys {
    /// Loads the configured keys, or the laptop key (generating it on first
    /// start).
    ///
    /// # Errors
    /// Fails, naming the variable, when a key is malformed or the key file
    /// cannot be read or written.
    pub fn load(args: &AuthArgs) -> anyhow::Result<Self> {
        // A configured key that is unusable is a bad value: exit 2 naming
        // the variable, never printing the key.
        if let Some(pem) = &args.jwt_private_key {
            return Self::from_pem(pem.expose_secret()).map_err(|err| {
                BadValue {
                    variable: "AUTH_JWT_PRIVATE_KEY",
                    message: format!("not a usable Ed25519 key in PEM: {err:#}"),
                }
                .into()
            });
        }
        if let Some(path) = &args.jwt_private_key_file {
            let pem = std::fs::read_to_string(path).map_err(|err| BadValue {
                variable: "AUTH_JWT_PRIVATE_KEY_FILE",
                message: format!("cannot read {}: {err}", path.display()),
            })?;
            return Self::from_pem(&pem).map_err(|err| {
                BadValue {
                    variable: "AUTH_JWT_PRIVATE_KEY_FILE",
                    message: format!(
                        "{} holds no usable Ed25519 key in PEM: {err:#}",
                        path.display()
                    ),
                }
                .into()
            });
        }
        Self::load_or_generate(Path::new(DEFAULT_KEY_FILE))
    }

    /// Reads the key file at `path`, creating it with a fresh key first if
    /// it does not exist.
    ///
    /// # Errors
    /// Fails when the file cannot be read, written or parsed.
    pub fn load_or_generate(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            let pem = Self::generate_pem()?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            write_private(path, &pem)?;
            tracing::info!(path = %path.display(), "generated a new token signing key");
        }
        let pem =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("signing key file {}", path.display()))
    }

    /// A new random Ed25519 key as PKCS#8 PEM.
    ///
    /// # Errors
    /// Fails when the OS has no randomness to give.
    pub fn generate_pem() -> anyhow::Result<String> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|err| anyhow::anyhow!("no OS randomness: {err}"))?;
        let key = SigningKey::from_bytes(&seed);
        Ok(key
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding the generated key")?
            .to_string())
    }

    /// Parses one or more PKCS#8 PEM blocks.
    ///
    /// # Errors
    /// Fails when there is no block or one is not an Ed25519 private key.
    pub fn from_pem(text: &str) -> anyhow::Result<Self> {
        const END: &str = "-----END PRIVATE KEY-----";
        if !text.contains(END) {
            bail!("no `-----BEGIN PRIVATE KEY-----` block found");
        }
        let mut keys = Vec::new();
        for (i, block) in text.split_inclusive(END).enumerate() {
            let block = block.trim();
            if !block.contains(END) {
                if block.is_empty() {
                    continue;
                }
                bail!("text after the last PEM block");
            }
            let signing = SigningKey::from_pkcs8_pem(block).map_err(|err| {
                anyhow::anyhow!("key {} is not an Ed25519 PKCS#8 PEM key: {err}", i + 1)
            })?;
            keys.push(KeyPair::new(&signing, block)?);
        }
        if keys.is_empty() {
            bail!("no `-----BEGIN PRIVATE KEY-----` block found");
        }
        Ok(Self { keys })
    }

    /// Signs `claims` with the current key, naming it in the `kid` header.
    ///
    /// # Errors
    /// Fails only if the claims cannot be serialised.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let current = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(current.kid.clone());
        jsonwebtoken::encode(&header, claims, &current.encoding).context("signing a token")
    }

    /// Every published key, the signing key first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.keys.iter().map(|k| k.public.clone()).collect()
    }
}

impl KeyPair {
    fn new(signing: &SigningKey, pem: &str) -> anyhow::Result<Self> {
        let verifying = signing.verifying_key();
        let raw = verifying.to_bytes();
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(raw)[..12]);
        let public_key_pem = verifying
            .to_public_key_pem(LineEnding::LF)
            .context("encoding a public key")?;
        Ok(Self {
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).context("loading a signing key")?,
            public: PublicKey {
                kid: kid.clone(),
                algorithm: "EdDSA".into(),
                curve: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(raw),
                public_key_pem,
            },
            kid,
        })
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_keys_are_all_published_and_the_first_signs() {
        let pem = format!(
            "{}\n{}",
            SigningKeys::generate_pem().unwrap(),
            SigningKeys::generate_pem().unwrap()
        );
        let keys = SigningKeys::from_pem(&pem).unwrap();
        let published = keys.public_keys();
        assert_eq!(published.len(), 2);
        assert_ne!(published[0].kid, published[1].kid);

        let token = keys
            .sign(&serde_json::json!({"sub": "x", "exp": 4_000_000_000u64}))
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(published[0].kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn bad_pem_is_refused() {
        assert!(SigningKeys::from_pem("").is_err());
        assert!(
            SigningKeys::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }

    #[test]
    fn the_laptop_key_is_generated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/jwt.pem");
        let first = SigningKeys::load_or_generate(&path).unwrap().public_keys();
        let second = SigningKeys::load_or_generate(&path).unwrap().public_keys();
        assert_eq!(first, second);
    }
}
