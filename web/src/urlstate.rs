//! Shareable links. The query string names the lesson and, for each widget on it whose
//! settings differ from the lesson's, those settings: `?lesson=what-fine-tuning-is&w2.steps=120`
//! (widgets are numbered from 1 in the order the lesson shows them). Values go through the
//! same [`Widget::set`] as lesson blocks, so a link cannot smuggle in a value a lesson could
//! not hold.

use crate::widgets::Widget;

/// The query parameters (already percent-decoded) that describe `widgets`, given the
/// lesson's own settings `base`.
pub fn encode(lesson: &str, base: &[Widget], widgets: &[Widget]) -> Vec<(String, String)> {
    let mut out = vec![("lesson".to_string(), lesson.to_string())];
    for (i, (w, b)) in widgets.iter().zip(base).enumerate() {
        for (k, v) in w.diff(b) {
            out.push((format!("w{}.{k}", i + 1), v));
        }
    }
    out
}

/// Applies a link's widget settings to the lesson's widgets. Returns one message per
/// parameter that was ignored (unknown widget number, bad value), for the page to show.
pub fn apply(query: &[(String, String)], widgets: &mut [Widget]) -> Vec<String> {
    let mut problems = Vec::new();
    for (key, value) in query {
        let Some(rest) = key.strip_prefix('w') else { continue };
        let Some((num, param)) = rest.split_once('.') else { continue };
        let Ok(n) = num.parse::<usize>() else { continue };
        match n.checked_sub(1).and_then(|i| widgets.get_mut(i)) {
            Some(w) => {
                if let Err(e) = w.set(param, value) {
                    problems.push(format!("link parameter {key} ignored: {e}"));
                }
            }
            None => problems.push(format!("link parameter {key} ignored: this lesson has {} widgets", widgets.len())),
        }
    }
    problems
}

/// The lesson slug a link names, if any.
pub fn lesson(query: &[(String, String)]) -> Option<&str> {
    query.iter().find(|(k, _)| k == "lesson").map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_restores_exactly_the_changed_settings() {
        let base = vec![Widget::from_block("name: generate").unwrap(), Widget::from_block("name: train\nsteps: 30").unwrap()];
        let mut now = base.clone();
        now[1].set("lr", "0.01").unwrap();
        now[1].set("task", "story-qa").unwrap();
        now[0].set("prompt", "text: hi\nfeeling:").unwrap();
        let query = encode("what-fine-tuning-is", &base, &now);
        assert_eq!(lesson(&query), Some("what-fine-tuning-is"));
        assert_eq!(query.len(), 4);
        let mut restored = base.clone();
        assert!(apply(&query, &mut restored).is_empty());
        assert_eq!(restored, now);
    }

    #[test]
    fn bad_link_parameters_are_reported_not_applied() {
        let base = vec![Widget::from_block("name: train").unwrap()];
        let mut w = base.clone();
        let q = |k: &str, v: &str| (k.to_string(), v.to_string());
        let problems = apply(&[q("w1.steps", "-3"), q("w2.steps", "5"), q("w1.depth", "4"), q("other", "x")], &mut w);
        assert_eq!(w, base);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("this lesson has 1 widgets"));
    }
}
