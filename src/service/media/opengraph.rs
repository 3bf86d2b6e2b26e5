//! A small, tolerant HTML scanner for link previews: it finds `<meta property="og:*">` tags,
//! `<meta name="description">` and the first `<title>`, and nothing else. Pure: bytes in,
//! strings out. It never builds a tree, so its cost is one pass over the (size-limited)
//! page, and malformed markup only loses the tags it garbles.

use std::collections::BTreeMap;

/// Most `og:*` properties kept from one page; a page listing thousands is not a preview.
const MAX_PROPERTIES: usize = 64;
/// Longest value kept, in characters; longer ones are cut.
const MAX_VALUE_CHARS: usize = 2000;

/// What a page says about itself.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PageMeta {
    /// `og:*` properties, the first of each name (OpenGraph arrays list the preferred first).
    pub og: BTreeMap<String, String>,
    /// The first `<title>`, whitespace collapsed.
    pub title: Option<String>,
    /// `<meta name="description">`.
    pub description: Option<String>,
}

impl PageMeta {
    /// The OpenGraph object a preview answers with: the page's `og:*` properties, with
    /// `og:title` and `og:description` taken from `<title>` and the description meta tag when
    /// the page has none.
    pub fn into_og(mut self) -> BTreeMap<String, String> {
        if let Some(title) = self.title.take() {
            self.og.entry("og:title".to_owned()).or_insert(title);
        }
        if let Some(description) = self.description.take() {
            self.og.entry("og:description".to_owned()).or_insert(description);
        }
        self.og
    }
}

/// Scan `html` (any bytes; invalid UTF-8 is replaced).
pub fn scan(html: &[u8]) -> PageMeta {
    let text = String::from_utf8_lossy(html);
    let mut scanner = Scanner { s: &text, pos: 0 };
    let mut meta = PageMeta::default();
    while let Some(tag) = scanner.next_tag() {
        match tag.name.as_str() {
            "meta" => meta.add_meta_tag(&tag.attrs),
            "title" if meta.title.is_none() => {
                let raw = scanner.raw_text_until("title");
                let title = collapse_whitespace(&decode_entities(raw));
                if !title.is_empty() {
                    meta.title = Some(truncate(title));
                }
            }
            // Their content is not markup: a "<meta" inside a script is not a tag.
            "script" | "style" | "textarea" | "noscript" => {
                scanner.raw_text_until(&tag.name);
            }
            _ => {}
        }
    }
    meta
}

impl PageMeta {
    fn add_meta_tag(&mut self, attrs: &[(String, String)]) {
        let attr = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let Some(content) = attr("content") else { return };
        let content = truncate(collapse_whitespace(&decode_entities(content)));
        // Sites put OpenGraph keys in `property` (the standard) or `name` (common anyway).
        let key = attr("property").or_else(|| attr("name")).map(str::to_ascii_lowercase);
        match key.as_deref() {
            Some(key)
                if key.starts_with("og:")
                    && key.len() > 3
                    && self.og.len() < MAX_PROPERTIES
                    && !content.is_empty() =>
            {
                self.og.entry(key.to_owned()).or_insert(content);
            }
            Some("description") if self.description.is_none() && !content.is_empty() => {
                self.description = Some(content);
            }
            _ => {}
        }
    }
}

struct Tag {
    /// Lower-cased; a closing tag's name starts with `/`.
    name: String,
    /// Attribute names lower-cased, values as written (entities not yet decoded).
    attrs: Vec<(String, String)>,
}

struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn bump_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let end = rest.find(|c: char| !keep(c)).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn skip_past(&mut self, needle: &str) {
        match self.rest().find(needle) {
            Some(i) => self.pos += i + needle.len(),
            None => self.pos = self.s.len(),
        }
    }

    /// The next tag with a name, skipping text, comments, doctypes and processing
    /// instructions.
    fn next_tag(&mut self) -> Option<Tag> {
        loop {
            let i = self.rest().find('<')?;
            self.pos += i + 1;
            let rest = self.rest();
            if rest.starts_with("!--") {
                self.skip_past("-->");
                continue;
            }
            if rest.starts_with('!') || rest.starts_with('?') {
                self.skip_past(">");
                continue;
            }
            let closing = rest.starts_with('/');
            if closing {
                self.pos += 1;
            }
            let name = self.bump_while(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':');
            if name.is_empty() {
                // A lone `<` in text.
                continue;
            }
            let name =
                if closing { format!("/{}", name.to_ascii_lowercase()) } else { name.to_ascii_lowercase() };
            let attrs = self.attributes();
            return Some(Tag { name, attrs });
        }
    }

    /// Attributes up to and including the tag's `>`.
    fn attrs_end(&mut self) -> bool {
        self.bump_while(|c| c.is_whitespace() || c == '/');
        if self.rest().starts_with('>') {
            self.pos += 1;
            return true;
        }
        self.rest().is_empty()
    }

    fn attributes(&mut self) -> Vec<(String, String)> {
        let mut attrs = Vec::new();
        while !self.attrs_end() {
            let name = self.bump_while(|c| !c.is_whitespace() && !matches!(c, '=' | '>' | '/'));
            if name.is_empty() {
                // A stray `=`: skip it rather than loop.
                self.pos += self.rest().chars().next().map_or(0, char::len_utf8);
                continue;
            }
            let name = name.to_ascii_lowercase();
            self.bump_while(char::is_whitespace);
            let mut value = String::new();
            if self.rest().starts_with('=') {
                self.pos += 1;
                self.bump_while(char::is_whitespace);
                value = match self.rest().chars().next() {
                    Some(quote @ ('"' | '\'')) => {
                        self.pos += 1;
                        let v = self.bump_while(|c| c != quote);
                        if !self.rest().is_empty() {
                            self.pos += 1;
                        }
                        v.to_owned()
                    }
                    _ => self.bump_while(|c| !c.is_whitespace() && c != '>').to_owned(),
                };
            }
            attrs.push((name, value));
        }
        attrs
    }

    /// Everything up to the closing tag `</name`, which is consumed too.
    fn raw_text_until(&mut self, name: &str) -> &'a str {
        let rest = self.rest();
        let closing = format!("</{name}");
        let end = find_ascii_case_insensitive(rest, &closing).unwrap_or(rest.len());
        self.pos += end;
        self.skip_past(">");
        &rest[..end]
    }
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: String) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((i, _)) => s[..i].to_owned(),
        None => s,
    }
}

/// Decode the character references pages use in titles and meta content: the XML five,
/// `&nbsp;`, and numeric references. Anything else stays as written.
pub fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(';').map(|e| e + 1).filter(|&e| e <= 12);
        let decoded = end.and_then(|e| {
            let entity = &rest[1..e];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some(' '),
                _ => {
                    let num = entity.strip_prefix('#')?;
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => num.parse().ok()?,
                    };
                    char::from_u32(code).filter(|c| !c.is_control() || c.is_whitespace())
                }
            }?;
            Some((c, e + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn og(html: &str) -> BTreeMap<String, String> {
        scan(html.as_bytes()).into_og()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn opengraph_tags_win_over_title_and_description() {
        let html = r#"<!DOCTYPE html><html><head>
            <title>Page title</title>
            <meta name="description" content="Plain description">
            <meta property="og:title" content="OG &amp; title">
            <meta property="og:image" content="/img/a.png">
            <meta property="og:image" content="/img/second.png">
            <meta property="og:image:width" content="640">
            </head><body>hello</body></html>"#;
        assert_eq!(
            og(html),
            map(&[
                ("og:title", "OG & title"),
                ("og:description", "Plain description"),
                ("og:image", "/img/a.png"),
                ("og:image:width", "640"),
            ])
        );
    }

    #[test]
    fn title_and_description_fill_in() {
        let html = "<html><head><TITLE>\n  A   title\n</TITLE><META NAME=Description CONTENT='It&#39;s &#x263A;'></head>";
        assert_eq!(og(html), map(&[("og:title", "A title"), ("og:description", "It's \u{263A}")]));
    }

    #[test]
    fn tolerates_broken_and_tricky_markup() {
        // Unquoted values, `>` inside quotes, attributes in any order, self-closing tags.
        let html = r#"<meta content="a > b" property=og:title /><meta property="og:type" content=website>"#;
        assert_eq!(og(html), map(&[("og:title", "a > b"), ("og:type", "website")]));
        // Tags inside comments and scripts are not tags.
        let html = r#"<!-- <meta property="og:title" content="no"> --><script>var s = '<meta property="og:title" content="no">';</script><meta property="og:title" content="yes">"#;
        assert_eq!(og(html), map(&[("og:title", "yes")]));
        // Garbage never panics and finds nothing.
        for junk in [
            "<",
            "<<<>>>",
            "<meta",
            "<meta content=\"x",
            "<title>unclosed",
            "&#xFFFFFFFF; &;",
            "<a =>",
            "\u{0}\u{ff}<é>",
        ] {
            let _ = og(junk);
        }
        assert_eq!(og("<title>unclosed"), map(&[("og:title", "unclosed")]));
        assert_eq!(scan(&[0xff, 0xfe, b'<', b't']), PageMeta::default());
    }

    #[test]
    fn values_and_counts_are_bounded() {
        let long = "x".repeat(5000);
        let html = format!(r#"<meta property="og:description" content="{long}">"#);
        assert_eq!(og(&html)["og:description"].chars().count(), MAX_VALUE_CHARS);
        let many: String = (0..200).map(|i| format!(r#"<meta property="og:k{i}" content="v">"#)).collect();
        assert_eq!(og(&many).len(), MAX_PROPERTIES);
    }

    #[test]
    fn entities() {
        assert_eq!(
            decode_entities("a &lt;b&gt; &amp;amp; &quot;&apos; &#65;&#x42; &unknown; & end"),
            "a <b> &amp; \"' AB &unknown; & end"
        );
        assert_eq!(decode_entities("&#0;&#1;"), "&#0;&#1;");
    }
}
