//! Login input rules (design.md §6) that hold for every organization: lengths, UTF-8, no control
//! characters. The organization's own username character pattern is checked by the server, which
//! owns organization settings. Pure functions: no I/O.

use crate::error::PortalError;

/// Longest accepted username in bytes (RADIUS User-Name as used by Cisco ISE).
pub const USERNAME_MAX_BYTES: usize = 63;
/// Longest accepted password in bytes (RFC 2865 User-Password carries at most 128 octets).
pub const PASSWORD_MAX_BYTES: usize = 128;

fn invalid(field: &str, message: impl Into<String>) -> PortalError {
    PortalError::InvalidInput {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a username's length and characters; `allowed` is the organization's pattern.
pub fn validate_username(
    username: &str,
    allowed: impl Fn(&str) -> bool,
) -> Result<(), PortalError> {
    if username.is_empty() {
        return Err(invalid("username", "Username is required."));
    }
    if username.len() > USERNAME_MAX_BYTES {
        return Err(invalid(
            "username",
            format!("Username is too long: at most {USERNAME_MAX_BYTES} characters (accented letters and other symbols count as two or more)."),
        ));
    }
    if username.chars().any(char::is_control) {
        return Err(invalid("username", "Username contains control characters."));
    }
    if username.chars().any(is_direction_mark) {
        return Err(invalid(
            "username",
            "Username contains invisible text-direction characters.",
        ));
    }
    if !allowed(username) {
        // A pattern that is a set of characters (the default) takes some of them on their own
        // (of the name's; for a name of one character, a plain letter or digit): then name the
        // first it refuses; else the form as a whole is wrong.
        let alone = |c: char| allowed(c.encode_utf8(&mut [0; 4]));
        let one = username.chars().count() == 1;
        let set_like =
            username.chars().any(alone) || (one && ['a', 'A', '0'].into_iter().any(alone));
        // A name with no character such a set takes alone (all Cyrillic, fullwidth): the first
        // character a plain name refuses between two letters (or digits) it takes (black-box
        // tester U's D3: "иван" was told its form was wrong, "иван1" which character).
        let between = || {
            let probe = ['a', 'A', '0']
                .into_iter()
                .find(|p| allowed(&format!("{p}{p}{p}")))?;
            username
                .chars()
                .find(|c| !allowed(&format!("{probe}{c}{probe}")))
        };
        let refused = set_like
            .then(|| username.chars().find(|c| !alone(*c)))
            .flatten()
            .or_else(between);
        let message = match refused {
            Some(c) if c.is_whitespace() => "Username must not contain spaces.".to_string(),
            // Quoted it would read as empty quotes: named by its code point instead.
            Some(c) if is_invisible(c) => format!(
                "Username must not contain the invisible character U+{:04X}.",
                u32::from(c)
            ),
            // Alone it would sit on the quote mark: named, and what it usually is.
            Some(c) if is_combining(c) => format!(
                "Username must not contain the combining mark U+{:04X} (an accent typed as a separate character: type the accented letter as one character).",
                u32::from(c)
            ),
            Some(c) => format!("Username must not contain “{c}”."),
            None => "Username is not in the form this organization expects.".to_string(),
        };
        return Err(invalid("username", message));
    }
    Ok(())
}

/// `text` as a page shows a name it did not check (the User-Name a RADIUS server gave the
/// session): each control, text-direction or invisible character written as its code point,
/// `⟨U+202E⟩`, so that the name reads as it is — not mirrored ("admin⟨U+202E⟩gnp.exe" is not
/// "adminexe.png") and not alike another ("bob⟨U+200B⟩" is not "bob").
pub fn shown_plainly(text: &str) -> std::borrow::Cow<'_, str> {
    // The zero-width joiner and non-joiner shape the letters around them (Persian, Indic
    // scripts): part of a name as it is written, and not hidden.
    let hidden = |c: char| {
        c.is_control()
            || is_direction_mark(c)
            || (is_invisible(c) && !matches!(c, '\u{200C}' | '\u{200D}'))
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            shown.push_str(&format!("⟨U+{:04X}⟩", u32::from(c)));
        } else {
            shown.push(c);
        }
    }
    std::borrow::Cow::Owned(shown)
}

/// Unicode bidirectional controls (they make text display other than it is: "Trojan Source").
pub fn is_direction_mark(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing where they stand (zero-width spaces and joiners, the soft
/// hyphen, variation selectors, the byte-order mark, tags, Hangul fillers, the blank Braille
/// pattern, annotation and format controls): a message quoting one would show empty quotes.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{206F}'
        | '\u{2800}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF9}'..='\u{FFFB}' | '\u{13430}'..='\u{1343F}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

/// Whether `c` is a combining mark of the common blocks (an accent put on the character before).
fn is_combining(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// Checks a password's length and characters.
pub fn validate_password(password: &str) -> Result<(), PortalError> {
    if password.is_empty() {
        return Err(invalid("password", "Password is required."));
    }
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(invalid(
            "password",
            format!("Password is too long: at most {PASSWORD_MAX_BYTES} characters (accented letters and other symbols count as two or more)."),
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(invalid("password", "Password contains control characters."));
    }
    if password.chars().any(is_direction_mark) {
        return Err(invalid(
            "password",
            "Password contains invisible text-direction characters.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_name_shown_plainly_names_what_it_would_hide() {
        assert_eq!(super::shown_plainly("carol"), "carol");
        assert_eq!(
            super::shown_plainly("admin\u{202E}gnp.exe"),
            "admin⟨U+202E⟩gnp.exe"
        );
        assert_eq!(super::shown_plainly("bob\u{200B}"), "bob⟨U+200B⟩");
        assert_eq!(super::shown_plainly("a\tb"), "a⟨U+0009⟩b");
        assert_eq!(super::shown_plainly("می\u{200C}خواهم"), "می\u{200C}خواهم");
    }

    use super::*;

    #[test]
    fn direction_marks_are_refused_in_both_fields() {
        assert!(validate_username("ad\u{202E}nimda", any).is_err());
        assert!(validate_password("pass\u{2066}word").is_err());
        assert!(validate_password("pässwörd ✓").is_ok());
    }

    fn any(_: &str) -> bool {
        true
    }

    fn field_of(result: Result<(), PortalError>) -> String {
        match result {
            Err(PortalError::InvalidInput { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn a_refused_username_says_which_character_or_what_is_wrong() {
        let message = |username: &str, allowed: fn(&str) -> bool| match validate_username(
            username, allowed,
        ) {
            Err(PortalError::InvalidInput { message, .. }) => message,
            other => panic!("expected InvalidInput, got {other:?}"),
        };
        let letters: fn(&str) -> bool = |u| u.chars().all(|c| c.is_ascii_lowercase());
        assert_eq!(
            message("bad user", letters),
            "Username must not contain spaces."
        );
        assert_eq!(message("carol!", letters), "Username must not contain “!”.");
        // A decomposed "ü": the accent alone is named by its code point.
        assert!(
            message("mu\u{0308}ller", letters)
                .starts_with("Username must not contain the combining mark U+0308 ("),
            "{}",
            message("mu\u{0308}ller", letters)
        );
        assert_eq!(
            message("car\u{200B}ol", letters),
            "Username must not contain the invisible character U+200B."
        );
        // One refused character alone is named too, as within a name.
        assert_eq!(message("é", letters), "Username must not contain “é”.");
        assert_eq!(message("\\", letters), "Username must not contain “\\”.");
        // No character the set takes, alone or between its letters: the first is named.
        assert_eq!(message("иван", letters), "Username must not contain “и”.");
        assert_eq!(
            message("ａｌｉｃｅ", letters),
            "Username must not contain “ａ”."
        );
        // A pattern no single character satisfies (a whole form): said as such.
        let email: fn(&str) -> bool = |u| u.ends_with("@example.org");
        assert_eq!(
            message("carol", email),
            "Username is not in the form this organization expects."
        );
        assert_eq!(
            message("x", email),
            "Username is not in the form this organization expects."
        );
        // Dots only between letters: "." alone or ".." is the form, not the dot, that is wrong.
        let dotted: fn(&str) -> bool = |u| {
            !u.is_empty()
                && u.split('.')
                    .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase()))
        };
        assert_eq!(
            message("..", dotted),
            "Username is not in the form this organization expects."
        );
    }

    #[test]
    fn a_normal_username_and_password_pass() {
        assert!(validate_username("alice@example.com", any).is_ok());
        assert!(validate_password("correct horse battery staple").is_ok());
    }

    #[test]
    fn username_of_63_bytes_passes_and_64_fails() {
        assert!(validate_username(&"a".repeat(63), any).is_ok());
        assert_eq!(
            field_of(validate_username(&"a".repeat(64), any)),
            "username"
        );
    }

    #[test]
    fn username_length_counts_bytes_not_characters() {
        // 32 two-byte characters = 64 bytes.
        assert!(validate_username(&"é".repeat(32), any).is_err());
    }

    #[test]
    fn empty_fields_are_rejected_with_their_name() {
        assert_eq!(field_of(validate_username("", any)), "username");
        assert_eq!(field_of(validate_password("")), "password");
    }

    #[test]
    fn control_characters_are_rejected() {
        assert_eq!(field_of(validate_username("al\nice", any)), "username");
        assert_eq!(field_of(validate_password("pass\u{0}word")), "password");
    }

    #[test]
    fn password_of_128_bytes_passes_and_129_fails() {
        assert!(validate_password(&"p".repeat(128)).is_ok());
        assert_eq!(field_of(validate_password(&"p".repeat(129))), "password");
    }

    #[test]
    fn organization_pattern_is_applied() {
        let no_spaces = |u: &str| !u.contains(' ');
        assert_eq!(field_of(validate_username("al ice", no_spaces)), "username");
    }
}

/// Property tests: any text is judged without panicking, and what passes meets every rule.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::fuzz_cases(2000)))]

        #[test]
        fn whatever_passes_meets_the_rules(text in "\\PC{0,70}|.{0,140}|[\\x00-\\x1f\\u{202a}-\\u{202e}a-z]{0,10}") {
            if validate_password(&text).is_ok() {
                prop_assert!(!text.is_empty() && text.len() <= PASSWORD_MAX_BYTES);
                prop_assert!(!text.chars().any(|c| c.is_control() || is_direction_mark(c)));
            }
            if validate_username(&text, |_| true).is_ok() {
                prop_assert!(!text.is_empty() && text.len() <= USERNAME_MAX_BYTES);
                prop_assert!(!text.chars().any(|c| c.is_control() || is_direction_mark(c)));
            }
        }
    }
}
