//! Finding the line of a dotted field path in TOML text, so a validation error can say where
//! the offending value was written.
//!
//! Validation works on the typed structs, which have forgotten where their values came from;
//! it names the problem by path (`limits.max_sessions`, `lease[1].name`,
//! `api_key[0].leases[2]`). This module re-reads the text with `toml_edit`, which keeps spans,
//! and walks that path. It only locates: it never decides what is valid and never fails a load
//! (text it cannot parse, or a path it cannot follow, yields the closest line it found or
//! `None`).

use std::ops::Range;

use toml_edit::{ImDocument, Item, Value};

/// The 1-based line where `field` (a dotted path with `[i]` indexes) is written in `text`.
///
/// An index on an array of tables picks the n-th `[[table]]`; on an inline array, the n-th
/// element. When the path runs out of the document (a missing key, an index past the end), the
/// line of the closest existing parent is returned; `None` when not even the first segment
/// exists or the text is not TOML.
pub fn locate(text: &str, field: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut found: Option<Range<usize>> = None;
    for step in steps(field)? {
        let next = match step {
            Step::Key(key) => node.key(key),
            Step::Index(i) => node.index(i),
        };
        let Some((span, child)) = next else { break };
        if span.is_some() {
            found = span;
        }
        node = child;
    }
    found.map(|span| line_of(text, span.start))
}

/// One segment of a field path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[1][2].c` into keys and indexes; `None` if a bracket is malformed.
fn steps(field: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(at) => part.split_at(at),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let (index, tail) = inner.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = tail;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// A position in the parsed document: tables hold items, arrays hold values.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a toml_edit::Table),
}

type Found<'a> = Option<(Option<Range<usize>>, Node<'a>)>;

impl<'a> Node<'a> {
    fn key(self, key: &str) -> Found<'a> {
        let (k, item) = match self {
            Node::Item(item) => item.as_table_like()?.get_key_value(key)?,
            Node::Value(value) => value.as_inline_table()?.get_key_value(key)?,
            Node::Table(table) => table.get_key_value(key)?,
        };
        // The key is where the field is written; a `[table]` header key may carry no span,
        // and then the header (the table's own span) is.
        Some((k.span().or_else(|| item.span()), Node::Item(item)))
    }

    fn index(self, i: usize) -> Found<'a> {
        let item = match self {
            Node::Item(item) => item,
            Node::Value(value) => {
                let v = value.as_array()?.get(i)?;
                return Some((v.span(), Node::Value(v)));
            }
            Node::Table(_) => return None,
        };
        if let Some(tables) = item.as_array_of_tables() {
            let t = tables.get(i)?;
            return Some((t.span(), Node::Table(t)));
        }
        let v = item.as_array()?.get(i)?;
        Some((v.span(), Node::Value(v)))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let upto = text.get(..offset).unwrap_or(text);
    upto.bytes().filter(|&b| b == b'\n').count() + 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const TEXT: &str = "\
relays = [
  \"wss://a\",
  \"wss://b\",
]
limits.max_sessions = 0

[timeouts]
hello = \"1s\"
tls = { cert = \"c\", key = \"k\" }

[[lease]]
name = \"one\"

[[lease]]
name = \"two\"
leases = [\"x\", \"y\", \"z\"]
";

    #[test]
    fn finds_keys_tables_and_indexes() {
        let cases = [
            ("relays", Some(1)),
            ("relays[1]", Some(3)),
            ("limits.max_sessions", Some(5)),
            ("timeouts", Some(7)),
            ("timeouts.hello", Some(8)),
            ("timeouts.tls.key", Some(9)),
            ("lease[0].name", Some(12)),
            ("lease[1]", Some(14)),
            ("lease[1].name", Some(15)),
            ("lease[1].leases[2]", Some(16)),
        ];
        for (field, line) in cases {
            assert_eq!(locate(TEXT, field), line, "{field}");
        }
    }

    #[test]
    fn falls_back_to_the_closest_parent() {
        assert_eq!(locate(TEXT, "timeouts.keepalive"), Some(7));
        assert_eq!(locate(TEXT, "lease[1].target"), Some(14));
        assert_eq!(locate(TEXT, "lease[5].name"), Some(11));
        assert_eq!(locate(TEXT, "relays[9]"), Some(1));
        assert_eq!(locate(TEXT, "control_plane.public_keys"), None);
    }

    #[test]
    fn bad_text_or_path_is_none() {
        assert_eq!(locate("= nope", "a"), None);
        assert_eq!(locate(TEXT, "relays[x]"), None);
        assert_eq!(locate(TEXT, "relays[1"), None);
    }

    #[test]
    fn paths_split_into_steps() {
        assert_eq!(
            steps("api_key[0].leases[2]").unwrap(),
            vec![
                Step::Key("api_key"),
                Step::Index(0),
                Step::Key("leases"),
                Step::Index(2)
            ]
        );
        assert_eq!(
            steps("a[1][2]").unwrap(),
            vec![Step::Key("a"), Step::Index(1), Step::Index(2)]
        );
    }
}
