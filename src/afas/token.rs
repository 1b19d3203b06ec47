//! The AFAS App Connector token.
//!
//! Step 7 of the setup hands the admin `<token><version>1</version><data>…64
//! hex…</data></token>`. Admins paste it in several shapes, so three are
//! accepted: the XML itself, only the 64-hex `data`, or the base64 of the XML
//! (what ends up in the `Authorization` header). Whatever the shape, it is
//! parsed and checked here before any request leaves the machine: AFAS
//! answers a malformed token with an unhelpful 500 or 401.

use base64::Engine as _;
use quick_xml::events::Event;

const DATA_LEN: usize = 64;

/// A validated App Connector token. Holds only the 64-hex data; `Debug`
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AppToken {
    data: String,
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppToken(<redacted>)")
    }
}

/// Why a token was refused. The messages never repeat the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the AFAS token is empty")]
    Empty,
    #[error("the AFAS token is not valid XML ({0}); paste the whole <token>…</token> from the App Connector screen")]
    Xml(String),
    #[error("the AFAS token XML has no <{0}> element")]
    Missing(&'static str),
    #[error("the AFAS token has version {0:?}; only version 1 is known")]
    UnsupportedVersion(String),
    #[error("the AFAS token data must be {DATA_LEN} hexadecimal characters, found {len} characters{detail}")]
    BadData { len: usize, detail: &'static str },
    #[error("the AFAS token is neither <token> XML, {DATA_LEN} hex characters, nor base64 of the XML")]
    Unrecognised,
}

impl AppToken {
    /// Accepts the token as XML, bare hex data, or base64 of the XML.
    pub fn parse(input: &str) -> Result<Self, TokenError> {
        let input = input.trim_start_matches('\u{feff}').trim();
        if input.is_empty() {
            return Err(TokenError::Empty);
        }
        if input.starts_with('<') {
            return Self::from_xml(input);
        }
        if input.len() == DATA_LEN && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(AppToken {
                data: input.to_string(),
            });
        }
        // A 64-char run of hex with a stray character is far likelier a
        // mangled paste than base64, so say what is wrong with it.
        if input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadData {
                len: input.len(),
                detail: "",
            });
        }
        let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| TokenError::Unrecognised)?;
        let xml = String::from_utf8(decoded).map_err(|_| TokenError::Unrecognised)?;
        if !xml.trim_start().starts_with('<') {
            return Err(TokenError::Unrecognised);
        }
        Self::from_xml(xml.trim())
    }

    fn from_xml(xml: &str) -> Result<Self, TokenError> {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut path: Vec<String> = Vec::new();
        let mut version: Option<String> = None;
        let mut data: Option<String> = None;
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) => {
                    path.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                }
                Ok(Event::End(_)) => {
                    path.pop();
                }
                Ok(Event::Text(t)) => {
                    let text = String::from_utf8_lossy(t.as_ref()).trim().to_string();
                    match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                        ["token", "version"] => version = Some(text),
                        ["token", "data"] => data = Some(text),
                        _ if text.is_empty() => {}
                        _ => return Err(TokenError::Xml("unexpected text".into())),
                    }
                }
                Ok(Event::Eof) => break,
                Ok(Event::Decl(_)) | Ok(Event::Comment(_)) | Ok(Event::Empty(_)) => {}
                Ok(_) => return Err(TokenError::Xml("unexpected content".into())),
                // quick-xml errors describe positions and tags, not the data.
                Err(e) => return Err(TokenError::Xml(e.to_string())),
            }
        }
        if !path.is_empty() {
            return Err(TokenError::Xml("unclosed element".into()));
        }
        let version = version.ok_or(TokenError::Missing("version"))?;
        if version != "1" {
            return Err(TokenError::UnsupportedVersion(version));
        }
        let data = data.ok_or(TokenError::Missing("data"))?;
        if data.len() != DATA_LEN {
            return Err(TokenError::BadData {
                len: data.len(),
                detail: "",
            });
        }
        if !data.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::BadData {
                len: data.len(),
                detail: " (some are not 0-9/A-F)",
            });
        }
        Ok(AppToken { data })
    }

    /// The canonical XML form AFAS expects.
    pub fn to_xml(&self) -> String {
        format!("<token><version>1</version><data>{}</data></token>", self.data)
    }

    /// The value of the `Authorization` header: `AfasToken base64(xml)`.
    pub fn header_value(&self) -> String {
        format!(
            "AfasToken {}",
            base64::engine::general_purpose::STANDARD.encode(self.to_xml())
        )
    }

    /// The 64-hex data; needed by the emulator and by secret-leak tests.
    pub fn data(&self) -> &str {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "610C51AE2FFE4B2C8E33D5A5EB163E12735C72A44D98C278C5E7B5B560079BC1";

    #[test]
    fn three_input_forms_give_the_same_token() {
        let xml = format!("<token><version>1</version><data>{HEX}</data></token>");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&xml);
        let a = AppToken::parse(&xml).expect("xml");
        let b = AppToken::parse(HEX).expect("hex");
        let c = AppToken::parse(&b64).expect("base64");
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.header_value(), format!("AfasToken {b64}"));
        // Pasted with surrounding whitespace and a BOM still works.
        assert_eq!(AppToken::parse(&format!("\u{feff}  {xml}\n")).expect("bom"), a);
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_the_data() {
        let cases = [
            ("", TokenError::Empty),
            (&HEX[..63], TokenError::BadData { len: 63, detail: "" }),
            (
                "<token><version>2</version><data>00</data></token>",
                TokenError::UnsupportedVersion("2".into()),
            ),
            ("<token><data>00</data></token>", TokenError::Missing("version")),
            ("<token><version>1</version></token>", TokenError::Missing("data")),
            ("not a token at all!", TokenError::Unrecognised),
        ];
        for (input, want) in cases {
            assert_eq!(AppToken::parse(input).unwrap_err(), want, "input {input:?}");
        }
        let bad_hex = format!("<token><version>1</version><data>{}</data></token>", "Z".repeat(64));
        let err = AppToken::parse(&bad_hex).unwrap_err();
        assert!(matches!(err, TokenError::BadData { len: 64, .. }));
        assert!(!err.to_string().contains("ZZZZ"));
        assert!(matches!(
            AppToken::parse("<token><version>1</version><data>"),
            Err(TokenError::Xml(_))
        ));
        assert!(!format!("{:?}", AppToken::parse(HEX).unwrap()).contains(HEX));
    }
}
