//! Lessons are markdown files (`lessons/NN-slug.md`) with a front matter block and fenced
//! `widget` blocks. This module turns one into a list of segments: rendered HTML, and the
//! widgets that sit between the paragraphs. Parsing is plain Rust, so every lesson is
//! checked by `cargo test` before a browser ever sees it.
//!
//! ```text
//! ---
//! title: What fine-tuning is
//! summary: One sentence for the table of contents.
//! order: 1
//! ---
//! Prose in CommonMark...
//!
//! ```widget
//! name: train
//! task: sentiment
//! ```
//! ```

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd, html};

use crate::widgets::Widget;

/// A parsed lesson.
#[derive(Clone, Debug, PartialEq)]
pub struct Lesson {
    /// From the file name: `01-what-fine-tuning-is.md` → `what-fine-tuning-is`.
    pub slug: String,
    pub title: String,
    pub summary: String,
    pub order: u32,
    pub segments: Vec<Segment>,
}

// A lesson holds a handful of segments, built once: boxing the widget would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// Rendered HTML of the markdown between widgets.
    Html(String),
    /// A widget as its block sets it, and the keys the block names (in the block's order,
    /// `name` aside): the settings the lesson talks about, which the widget shows unfolded.
    Widget { widget: Widget, named: Vec<&'static str> },
}

impl Lesson {
    pub fn widgets(&self) -> impl Iterator<Item = &Widget> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Widget { widget, .. } => Some(widget),
            Segment::Html(_) => None,
        })
    }
}

/// Parses the lesson in file `file_name` (used for the slug and in every error message).
pub fn parse(file_name: &str, text: &str) -> Result<Lesson, String> {
    let slug = slug_of(file_name)?;
    let (front, body, body_line) = split_front_matter(text).map_err(|e| format!("{file_name}: {e}"))?;
    let (mut title, mut summary, mut order) = (None, None, None);
    for (i, line) in front.lines().enumerate() {
        let line_no = i + 2;
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or_else(|| format!("{file_name}:{line_no}: front matter lines are `key: value`, got {line:?}"))?;
        let value = value.trim().to_string();
        match key.trim() {
            "title" => title = Some(value),
            "summary" => summary = Some(value),
            "order" => order = Some(value.parse::<u32>().map_err(|_| format!("{file_name}:{line_no}: order: {value:?} is not a whole number"))?),
            other => return Err(format!("{file_name}:{line_no}: unknown front matter key {other:?}; use title, summary and order")),
        }
    }
    let need = |v: Option<String>, key: &str| v.filter(|s| !s.is_empty()).ok_or_else(|| format!("{file_name}: front matter: add `{key}: ...`"));
    let title = need(title, "title")?;
    let summary = need(summary, "summary")?;
    let order = order.ok_or_else(|| format!("{file_name}: front matter: add `order: N`"))?;
    let segments = segments(body).map_err(|(offset, e)| format!("{file_name}:{}: {e}", body_line + line_of(body, offset)))?;
    Ok(Lesson { slug, title, summary, order, segments })
}

/// `01-what-fine-tuning-is.md` → `what-fine-tuning-is`.
fn slug_of(file_name: &str) -> Result<String, String> {
    let stem = file_name.rsplit('/').next().unwrap_or(file_name).strip_suffix(".md").ok_or_else(|| format!("{file_name}: a lesson file must end in .md"))?;
    let (num, slug) = stem.split_once('-').ok_or_else(|| format!("{file_name}: name lessons NN-slug.md"))?;
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) || slug.is_empty() {
        return Err(format!("{file_name}: name lessons NN-slug.md"));
    }
    if !slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(format!("{file_name}: the slug may use only a-z, 0-9 and '-'"));
    }
    Ok(slug.to_string())
}

/// Returns (front matter, body, the 1-based line number where the body starts).
fn split_front_matter(text: &str) -> Result<(&str, &str, usize), String> {
    let rest = text.strip_prefix("---\n").ok_or("the file must start with a `---` front matter line")?;
    let end = rest.find("\n---\n").ok_or("the front matter has no closing `---` line")?;
    let front = &rest[..end];
    let body = &rest[end + 5..];
    Ok((front, body, front.lines().count() + 3))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count()
}

/// Markdown → HTML segments with widgets in between. Errors carry the byte offset of the
/// offending widget block.
fn segments(body: &str) -> Result<Vec<Segment>, (usize, String)> {
    let mut out = Vec::new();
    let mut pending: Vec<Event> = Vec::new();
    let mut widget: Option<(usize, String)> = None;
    let flush = |pending: &mut Vec<Event>, out: &mut Vec<Segment>| {
        if !pending.is_empty() {
            let mut s = String::new();
            html::push_html(&mut s, pending.drain(..));
            out.push(Segment::Html(s));
        }
    };
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_SMART_PUNCTUATION;
    for (event, range) in Parser::new_ext(body, options).into_offset_iter() {
        match (&event, &mut widget) {
            (Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))), None) if info.trim() == "widget" => {
                widget = Some((range.start, String::new()));
            }
            (Event::Text(t), Some((_, text))) => text.push_str(t),
            (Event::End(TagEnd::CodeBlock), Some(_)) => {
                let (start, text) = widget.take().expect("inside a widget block");
                flush(&mut pending, &mut out);
                let widget = Widget::from_block(&text).map_err(|e| (start, format!("widget block: {e}")))?;
                let named = named_keys(&widget, &text);
                out.push(Segment::Widget { widget, named });
            }
            (Event::Html(_) | Event::InlineHtml(_), None) => {
                return Err((range.start, "raw HTML is not allowed in lessons; use markdown or a widget".into()));
            }
            (_, None) => pending.push(event),
            (_, Some(_)) => {}
        }
    }
    flush(&mut pending, &mut out);
    Ok(out)
}

/// The keys a widget block sets, in its order, as the widget spells them: the same
/// `key: value` lines `Widget::from_block` reads (blank lines, `#` comments and `name` aside),
/// once it has accepted them. A sweep (`sweep: optimizer=sgd,adamw`) names the key it sweeps
/// too.
fn named_keys(widget: &Widget, block: &str) -> Vec<&'static str> {
    let keys = widget.keys();
    let mut named = Vec::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((key, value)) = line.split_once(':') else { continue };
        let key = key.trim();
        let swept = if key == "sweep" { value.split_once('=').map(|(k, _)| k.trim()) } else { None };
        for key in std::iter::once(key).chain(swept) {
            if let Some(&k) = keys.iter().find(|k| **k == key)
                && !named.contains(&k)
            {
                named.push(k);
            }
        }
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "---\ntitle: T\nsummary: S\norder: 3\n---\nHello *there*.\n\n```widget\nname: model-card\nmodel: nano\n```\n\nAfter.\n\n```rust\nlet x = 1;\n```\n";

    #[test]
    fn splits_prose_and_widgets() {
        let l = parse("lessons/03-a-b.md", GOOD).unwrap();
        assert_eq!((l.slug.as_str(), l.title.as_str(), l.summary.as_str(), l.order), ("a-b", "T", "S", 3));
        assert_eq!(l.segments.len(), 3);
        assert!(matches!(&l.segments[0], Segment::Html(h) if h.contains("<em>there</em>")));
        assert!(matches!(&l.segments[1], Segment::Widget { widget: Widget::ModelCard(_), named } if named == &["model"]));
        // Ordinary code blocks stay code.
        assert!(matches!(&l.segments[2], Segment::Html(h) if h.contains("<code class=\"language-rust\">")));
    }

    #[test]
    fn a_widget_keeps_the_keys_its_block_names() {
        let text = "---\ntitle: T\nsummary: S\norder: 1\n---\n```widget\n# a comment\nname: train\nsteps: 30\nmodel: nano\n\nsweep: optimizer=sgd,adamw\ncompare: true\n```\n";
        let l = parse("01-a.md", text).unwrap();
        let Segment::Widget { named, .. } = &l.segments[0] else { panic!("{:?}", l.segments) };
        assert_eq!(named, &["steps", "model", "sweep", "optimizer", "compare"]);
    }

    fn err(name: &str, text: &str) -> String {
        parse(name, text).unwrap_err()
    }

    #[test]
    fn errors_name_the_file_line_and_fix() {
        assert!(err("x.md", GOOD).contains("NN-slug.md"));
        assert!(err("01-a.md", "title: x\n").contains("must start with a `---`"));
        assert!(err("01-a.md", "---\ntitle: T\n").contains("no closing"));
        assert!(err("01-a.md", "---\ntitle: T\nsummary: S\n---\n").contains("add `order: N`"));
        assert!(err("01-a.md", "---\ntitle: T\nsummary: S\norder: x\n---\n").contains("01-a.md:4: order"));
        assert!(err("01-a.md", "---\ntitle: T\nsummary: S\norder: 1\nauthor: me\n---\n").contains("unknown front matter key \"author\""));
        let unknown = err("01-a.md", "---\ntitle: T\nsummary: S\norder: 1\n---\npara\n\n```widget\nname: nope\n```\n");
        assert!(unknown.starts_with("01-a.md:8: widget block: unknown widget \"nope\""), "{unknown}");
        let param = err("01-a.md", "---\ntitle: T\nsummary: S\norder: 1\n---\n```widget\nname: train\nsteps: lots\n```\n");
        assert!(param.contains("steps"), "{param}");
        assert!(err("01-a.md", "---\ntitle: T\nsummary: S\norder: 1\n---\n<div>hi</div>\n").contains("raw HTML"));
    }
}
