//! The island's JSON reader: what the server fns and the event stream answer, read into a
//! small tree the island picks its fields from. serde_json would do it, but its error messages
//! (built as it reads, whether or not anyone shows them) carry float and `Debug` formatting
//! into the WASM every user downloads; this reads only what the server writes — objects,
//! arrays, strings, integers, booleans, null — and says nothing about why it could not.

/// A JSON value. Numbers are integers (the server sends no others): one with a fraction or an
/// exponent reads as `Num(None)`, so a field the island does not use cannot make it fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits an `i64`; None for any other number.
    Num(Option<i64>),
    /// A string, its escapes decoded.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object's members, in order.
    Obj(Vec<(String, Json)>),
}

/// Nesting deeper than this is refused (the server's answers nest three levels).
const MAX_DEPTH: u32 = 32;

impl Json {
    /// Reads one JSON document (surrounding whitespace allowed); None if it is not one.
    pub fn parse(text: &str) -> Option<Json> {
        let mut reader = Reader {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = reader.value(0)?;
        reader.space();
        (reader.at == reader.bytes.len()).then_some(value)
    }

    /// The member `name` of an object (the first, if named twice).
    pub fn get(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Json::Num(n) => *n,
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// Takes `word` (the rest of a literal) if it is next.
    fn word(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn value(&mut self, depth: u32) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.space();
        Some(match self.next()? {
            b'n' => self.word(b"ull").map(|()| Json::Null)?,
            b't' => self.word(b"rue").map(|()| Json::Bool(true))?,
            b'f' => self.word(b"alse").map(|()| Json::Bool(false))?,
            b'"' => Json::Str(self.string()?),
            b'[' => Json::Arr(self.list(b']', |r| r.value(depth + 1))?),
            b'{' => Json::Obj(self.list(b'}', |r| {
                r.space();
                if r.next()? != b'"' {
                    return None;
                }
                let name = r.string()?;
                r.space();
                if r.next()? != b':' {
                    return None;
                }
                Some((name, r.value(depth + 1)?))
            })?),
            first @ (b'-' | b'0'..=b'9') => self.number(first)?,
            _ => return None,
        })
    }

    /// The items of an array or object, its opening bracket read, up to `close`: none, or
    /// `item`s separated by commas.
    fn list<T>(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut items = Vec::new();
        self.space();
        if self.bytes.get(self.at) == Some(&close) {
            self.at += 1;
            return Some(items);
        }
        loop {
            items.push(item(self)?);
            self.space();
            match self.next()? {
                b',' => {}
                b if b == close => return Some(items),
                _ => return None,
            }
        }
    }

    /// A number whose first byte was `first`.
    fn number(&mut self, first: u8) -> Option<Json> {
        let negative = first == b'-';
        let mut digits = if negative { Vec::new() } else { vec![first] };
        while let Some(&d @ b'0'..=b'9') = self.bytes.get(self.at) {
            digits.push(d);
            self.at += 1;
        }
        // JSON: at least one digit, and no leading zero before others.
        if digits.is_empty() || (digits[0] == b'0' && digits.len() > 1) {
            return None;
        }
        let mut whole = true;
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            whole = false;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.at) {
            self.at += 1;
            whole = false;
            if let Some(b'+' | b'-') = self.bytes.get(self.at) {
                self.at += 1;
            }
            self.digits()?;
        }
        let value = whole
            .then(|| {
                digits.iter().try_fold(0i64, |n, d| {
                    let d = i64::from(d - b'0');
                    n.checked_mul(10)?
                        .checked_add(if negative { -d } else { d })
                })
            })
            .flatten();
        Some(Json::Num(value))
    }

    /// One or more digits.
    fn digits(&mut self) -> Option<()> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
        (self.at > start).then_some(())
    }

    /// The rest of a string whose opening quote was read.
    fn string(&mut self) -> Option<String> {
        let mut out = String::new();
        loop {
            // Up to the next quote or escape, copied as it is (the input is UTF-8 already).
            let start = self.at;
            while let Some(&b) = self.bytes.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(std::str::from_utf8(&self.bytes[start..self.at]).ok()?);
            match self.next()? {
                b'"' => return Some(out),
                b'\\' => out.push(match self.next()? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => self.escaped_char()?,
                    _ => return None,
                }),
                // A control character unescaped.
                _ => return None,
            }
        }
    }

    /// The character of a `\u` escape (a surrogate pair takes two), its `\u` read.
    fn escaped_char(&mut self) -> Option<char> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                self.word(b"\\u")?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return None;
                }
                0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00)
            }
            0xDC00..=0xDFFF => return None,
            _ => first,
        };
        char::from_u32(code)
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        digits
            .iter()
            .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_serde_json_writes() {
        let value = serde_json::json!({
            "s": "a \"quoted\" \\ line\nwith é, 😀, \u{1} and \u{7f}",
            "n": -9_223_372_036_854_775_807i64,
            "big": 9_007_199_254_740_993u64,
            "t": true, "f": false, "z": null,
            "a": [1, [], {}, "x"],
            "o": {"Ended": "Expired"},
        });
        let text = serde_json::to_string(&value).unwrap();
        let read = Json::parse(&text).unwrap();
        assert_eq!(
            read.get("s").and_then(Json::str),
            Some("a \"quoted\" \\ line\nwith é, 😀, \u{1} and \u{7f}")
        );
        assert_eq!(
            read.get("n").and_then(Json::int),
            Some(-9_223_372_036_854_775_807)
        );
        assert_eq!(
            read.get("big").and_then(Json::int),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(read.get("t").and_then(Json::bool), Some(true));
        assert_eq!(read.get("f").and_then(Json::bool), Some(false));
        assert_eq!(read.get("z"), Some(&Json::Null));
        assert_eq!(
            read.get("a"),
            Some(&Json::Arr(vec![
                Json::Num(Some(1)),
                Json::Arr(vec![]),
                Json::Obj(vec![]),
                Json::Str("x".into())
            ]))
        );
        assert_eq!(
            read.get("o")
                .and_then(|o| o.get("Ended"))
                .and_then(Json::str),
            Some("Expired")
        );
        assert_eq!(read.get("missing"), None);
    }

    #[test]
    fn escapes_and_numbers_as_json_has_them() {
        let read = |text: &str| Json::parse(text);
        assert_eq!(
            read(r#""\u00e9\ud83d\ude00\/\t""#),
            Some(Json::Str("é😀/\t".into()))
        );
        assert_eq!(read(" \n 42 \r\n"), Some(Json::Num(Some(42))));
        assert_eq!(read("-0"), Some(Json::Num(Some(0))));
        // Not integers, or too large: read, with no value.
        for text in ["1.5", "1e3", "-2.5E-3", "9223372036854775808"] {
            assert_eq!(read(text), Some(Json::Num(None)), "{text}");
        }
        assert_eq!(
            read("-9223372036854775808"),
            Some(Json::Num(Some(i64::MIN)))
        );
        assert_eq!(
            read(r#"{"a":1.5,"b":2}"#).and_then(|o| o.get("b").and_then(Json::int)),
            Some(2)
        );
    }

    #[test]
    fn refuses_what_is_not_json() {
        let nested_too_deep = "[".repeat(40) + &"]".repeat(40);
        for text in [
            "",
            " ",
            "nul",
            "nulls",
            "tru",
            "01",
            "-",
            "1.",
            "1e",
            "+1",
            "\"open",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\ud800\"",
            "\"\\ud800\\u0041\"",
            "\"\\udc00\"",
            "\"tab\there\"",
            "[1,]",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":1,}",
            "{a:1}",
            "{\"a\":1",
            "[]]",
            "1 2",
            nested_too_deep.as_str(),
        ] {
            assert_eq!(Json::parse(text), None, "{text:?}");
        }
        let deep_enough = "[".repeat(20) + &"]".repeat(20);
        assert!(Json::parse(&deep_enough).is_some());
    }
}
