//! `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): the client
//! proves who it is with a short-lived JWT signed by its private key, so no
//! shared secret travels or expires. Signing uses ring (already built for
//! rustls); keys are PEM, PKCS#8 or (RSA) PKCS#1. The verifying half is here
//! too, for the AFAS emulator and the tests.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// How long an assertion is valid: long enough for a slow round trip,
/// short enough that a captured one is useless soon after.
pub const ASSERTION_LIFETIME_SECS: i64 = 120;

/// The JWS algorithms AFAS accepts for client assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Alg {
    RS256,
    PS256,
    ES256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::ES256 => "ES256",
        }
    }
}

/// Why a key could not be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM private key found (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)")]
    NoKey,
    #[error("the key is an EC key in SEC1 form (BEGIN EC PRIVATE KEY); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8` and point to that")]
    Sec1,
    #[error("the key is not an RSA key (2048 bits or more) or a P-256 EC key: {0}")]
    Unsupported(String),
    #[error("{alg} needs {needs} key, but this is {is} key")]
    WrongAlg {
        alg: &'static str,
        needs: &'static str,
        is: &'static str,
    },
    #[error("no PEM public key found (expected -----BEGIN PUBLIC KEY-----)")]
    NoPublicKey,
    #[error("signing failed")]
    Sign,
}

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A loaded private key with the algorithm it signs with. `Debug` shows
/// only the algorithm.
pub struct SigningKey {
    pair: Pair,
    alg: Alg,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.alg.name())
    }
}

/// The claims of a client assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// Reads a PEM private key. `alg` defaults to RS256 for RSA keys and
    /// ES256 for EC keys.
    pub fn from_pem(pem: &[u8], alg: Option<Alg>) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
            if String::from_utf8_lossy(pem).contains("BEGIN EC PRIVATE KEY") {
                KeyError::Sec1
            } else {
                KeyError::NoKey
            }
        })?;
        let rng = SystemRandom::new();
        let pair = match &der {
            PrivateKeyDer::Pkcs1(k) => {
                Pair::Rsa(RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(|e| KeyError::Unsupported(e.to_string()))?)
            }
            PrivateKeyDer::Sec1(_) => return Err(KeyError::Sec1),
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(bytes) {
                    Ok(p) => Pair::Rsa(p),
                    Err(_) => Pair::Ec(
                        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, bytes, &rng)
                            .map_err(|e| KeyError::Unsupported(e.to_string()))?,
                    ),
                }
            }
            _ => return Err(KeyError::NoKey),
        };
        let is = match pair {
            Pair::Rsa(_) => "an RSA",
            Pair::Ec(_) => "a P-256 EC",
        };
        let alg = match (alg, &pair) {
            (None, Pair::Rsa(_)) => Alg::RS256,
            (None, Pair::Ec(_)) => Alg::ES256,
            (Some(a @ (Alg::RS256 | Alg::PS256)), Pair::Rsa(_)) | (Some(a @ Alg::ES256), Pair::Ec(_)) => a,
            (Some(a), _) => {
                return Err(KeyError::WrongAlg {
                    alg: a.name(),
                    needs: if a == Alg::ES256 { "a P-256 EC" } else { "an RSA" },
                    is,
                })
            }
        };
        Ok(SigningKey { pair, alg, rng })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The public half as a PEM `PUBLIC KEY` (what the OAuth client is
    /// registered with).
    pub fn public_key_pem(&self) -> String {
        let spki = match &self.pair {
            Pair::Rsa(p) => spki(RSA_ALG_ID, p.public().as_ref()),
            Pair::Ec(p) => spki(EC_P256_ALG_ID, p.public_key().as_ref()),
        };
        pem("PUBLIC KEY", &spki)
    }

    /// A signed assertion for `client_id` at the token endpoint `audience`,
    /// issued at `now` (Unix seconds), with a fresh random `jti`.
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> Result<String, KeyError> {
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| KeyError::Sign)?;
        let claims = Claims {
            iss: client_id.into(),
            sub: client_id.into(),
            aud: audience.into(),
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
            jti: b64(&jti),
        };
        let header = serde_json::json!({"alg": self.alg.name(), "typ": "JWT"});
        let claims = serde_json::to_vec(&claims).map_err(|_| KeyError::Sign)?;
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&claims));
        let sig = match &self.pair {
            Pair::Rsa(p) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; p.public().modulus_len()];
                p.sign(padding, &self.rng, signing_input.as_bytes(), &mut sig)
                    .map_err(|_| KeyError::Sign)?;
                sig
            }
            Pair::Ec(p) => p
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{signing_input}.{}", b64(&sig)))
    }
}

/// A new P-256 private key as PKCS#8 PEM (the demo's OAuth client).
pub fn generate_p256() -> Result<String, KeyError> {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| KeyError::Sign)?;
    Ok(pem("PRIVATE KEY", pkcs8.as_ref()))
}

/// A public key that checks assertions (the token endpoint's side).
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    rsa: bool,
    key: Vec<u8>,
}

impl VerifyingKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of RSA or P-256.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|_| KeyError::NoPublicKey)?;
        let (alg_id, key) = parse_spki(der.as_ref()).ok_or(KeyError::NoPublicKey)?;
        if alg_id == RSA_ALG_ID {
            Ok(VerifyingKey { rsa: true, key })
        } else if alg_id == EC_P256_ALG_ID {
            Ok(VerifyingKey { rsa: false, key })
        } else {
            Err(KeyError::Unsupported("the public key's algorithm".into()))
        }
    }

    /// Checks the signature and returns the claims; the caller checks
    /// them (audience, expiry, replay).
    pub fn verify(&self, jwt: &str) -> Result<Claims, String> {
        let mut parts = jwt.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not a compact JWS".into());
        };
        let dec = |p: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| "bad base64url".to_string())
        };
        let header: serde_json::Value = serde_json::from_slice(&dec(h)?).map_err(|_| "bad header")?;
        let alg: &dyn signature::VerificationAlgorithm = match (header.get("alg").and_then(|a| a.as_str()), self.rsa) {
            (Some("RS256"), true) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (Some("PS256"), true) => &signature::RSA_PSS_2048_8192_SHA256,
            (Some("ES256"), false) => &signature::ECDSA_P256_SHA256_FIXED,
            (alg, _) => return Err(format!("algorithm {alg:?} does not fit the registered key")),
        };
        signature::UnparsedPublicKey::new(alg, &self.key)
            .verify(format!("{h}.{c}").as_bytes(), &dec(s)?)
            .map_err(|_| "signature does not verify")?;
        serde_json::from_slice(&dec(c)?).map_err(|_| "bad claims".into())
    }
}

// AlgorithmIdentifier contents (the inner SEQUENCE's bytes).
// rsaEncryption with NULL parameters.
const RSA_ALG_ID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
// id-ecPublicKey with the prime256v1 curve.
const EC_P256_ALG_ID: &[u8] = &[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
];

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn spki(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = vec![0u8];
    bits.extend_from_slice(key);
    let mut body = der(0x30, alg_id);
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

/// One DER element: (tag, contents, rest).
fn read_der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// SubjectPublicKeyInfo → (AlgorithmIdentifier contents, key bits).
fn parse_spki(input: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (0x30, body, _) = read_der(input)? else { return None };
    let (0x30, alg_id, rest) = read_der(body)? else {
        return None;
    };
    let (0x03, bits, _) = read_der(rest)? else { return None };
    let (0, key) = bits.split_first()? else { return None };
    Some((alg_id.to_vec(), key.to_vec()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
    }

    #[test]
    fn each_algorithm_signs_what_the_matching_public_key_verifies() {
        for (key, public, alg, want) in [
            ("rsa.pem", "rsa.pub.pem", None, Alg::RS256),
            ("rsa.pem", "rsa.pub.pem", Some(Alg::PS256), Alg::PS256),
            ("rsa-pkcs1.pem", "rsa.pub.pem", None, Alg::RS256),
            ("ec.pem", "ec.pub.pem", None, Alg::ES256),
        ] {
            let k = SigningKey::from_pem(&fixture(key), alg).expect(key);
            assert_eq!(k.alg(), want);
            // The public half we derive is the one openssl derives.
            assert_eq!(
                k.public_key_pem(),
                String::from_utf8(fixture(public)).expect("utf8"),
                "{key}"
            );
            let jwt = k
                .assertion("client-1", "https://x.example/oauth/token", 1_800_000_000)
                .expect("sign");
            let claims = VerifyingKey::from_pem(&fixture(public))
                .expect("pub")
                .verify(&jwt)
                .expect("verifies");
            assert_eq!(
                (claims.iss.as_str(), claims.sub.as_str(), claims.aud.as_str()),
                ("client-1", "client-1", "https://x.example/oauth/token")
            );
            assert_eq!(claims.exp - claims.iat, ASSERTION_LIFETIME_SECS);
            let again = k.assertion("client-1", "a", 1_800_000_000).expect("sign");
            let again = VerifyingKey::from_pem(&fixture(public))
                .expect("pub")
                .verify(&again)
                .expect("v");
            assert_ne!(claims.jti, again.jti, "a fresh jti each time");
            assert!(!format!("{k:?}").contains("BEGIN"), "Debug shows no key");
        }
    }

    #[test]
    fn a_key_that_does_not_match_or_a_wrong_algorithm_is_refused() {
        let other = SigningKey::from_pem(&fixture("other-rsa.pem"), None).expect("key");
        let jwt = other.assertion("c", "a", 0).expect("sign");
        let err = VerifyingKey::from_pem(&fixture("rsa.pub.pem"))
            .expect("pub")
            .verify(&jwt);
        assert_eq!(err.unwrap_err(), "signature does not verify");
        assert_eq!(
            SigningKey::from_pem(&fixture("ec.pem"), Some(Alg::RS256)).unwrap_err(),
            KeyError::WrongAlg {
                alg: "RS256",
                needs: "an RSA",
                is: "a P-256 EC"
            }
        );
        assert_eq!(
            SigningKey::from_pem(&fixture("ec-sec1.pem"), None).unwrap_err(),
            KeyError::Sec1
        );
        assert_eq!(SigningKey::from_pem(b"not a key", None).unwrap_err(), KeyError::NoKey);
        // An RS256 token is not taken for an EC key, nor a tampered one.
        let ec = VerifyingKey::from_pem(&fixture("ec.pub.pem")).expect("pub");
        assert!(ec.verify(&jwt).is_err());
        // A generated key reads back and signs what its public half verifies.
        let fresh = SigningKey::from_pem(generate_p256().expect("gen").as_bytes(), None).expect("read");
        let public = VerifyingKey::from_pem(fresh.public_key_pem().as_bytes()).expect("pub");
        assert!(public.verify(&fresh.assertion("c", "a", 0).expect("s")).is_ok());
        let good = SigningKey::from_pem(&fixture("ec.pem"), None)
            .expect("k")
            .assertion("c", "a", 0)
            .expect("s");
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = b64(br#"{"iss":"evil","sub":"evil","aud":"a","iat":0,"exp":9999999999,"jti":"x"}"#);
        parts[1] = &forged;
        assert_eq!(ec.verify(&parts.join(".")).unwrap_err(), "signature does not verify");
    }
}
