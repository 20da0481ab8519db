//! Every lesson, embedded in the page at compile time. Add a lesson by adding its file to
//! `lessons/` and a line here; a test fails if the two lists disagree.

use crate::lesson::{Lesson, parse};

/// (file name, contents), in any order; [`all`] sorts them by their front matter `order`.
pub const FILES: &[(&str, &str)] = &[
    ("01-what-fine-tuning-is.md", include_str!("../../lessons/01-what-fine-tuning-is.md")),
    ("02-when-not-to-fine-tune.md", include_str!("../../lessons/02-when-not-to-fine-tune.md")),
    ("03-where-memory-goes.md", include_str!("../../lessons/03-where-memory-goes.md")),
    ("04-checkpointing-and-accumulation.md", include_str!("../../lessons/04-checkpointing-and-accumulation.md")),
    ("05-sharding-and-offload.md", include_str!("../../lessons/05-sharding-and-offload.md")),
    ("06-number-formats.md", include_str!("../../lessons/06-number-formats.md")),
    ("07-quantization.md", include_str!("../../lessons/07-quantization.md")),
    ("08-hyperparameters.md", include_str!("../../lessons/08-hyperparameters.md")),
    ("09-optimizers.md", include_str!("../../lessons/09-optimizers.md")),
    ("10-zeroth-order.md", include_str!("../../lessons/10-zeroth-order.md")),
    ("11-attention-kernels.md", include_str!("../../lessons/11-attention-kernels.md")),
    ("12-peft-family.md", include_str!("../../lessons/12-peft-family.md")),
    ("13-adapters.md", include_str!("../../lessons/13-adapters.md")),
    ("14-lora.md", include_str!("../../lessons/14-lora.md")),
    ("15-qlora.md", include_str!("../../lessons/15-qlora.md")),
    ("16-soft-prompts.md", include_str!("../../lessons/16-soft-prompts.md")),
    ("17-choosing-a-method.md", include_str!("../../lessons/17-choosing-a-method.md")),
    ("18-many-models-into-one.md", include_str!("../../lessons/18-many-models-into-one.md")),
    ("19-learning-from-preferences.md", include_str!("../../lessons/19-learning-from-preferences.md")),
    ("20-smaller-models.md", include_str!("../../lessons/20-smaller-models.md")),
    ("21-longer-contexts.md", include_str!("../../lessons/21-longer-contexts.md")),
    ("22-a-real-model.md", include_str!("../../lessons/22-a-real-model.md")),
    ("100-how-we-know.md", include_str!("../../lessons/100-how-we-know.md")),
];

/// Every lesson, parsed and sorted by `order`. The files are checked by tests, so an error
/// here means a lesson was edited without running them.
pub fn all() -> Result<Vec<Lesson>, String> {
    let mut lessons = FILES.iter().map(|(name, text)| parse(name, text)).collect::<Result<Vec<_>, _>>()?;
    lessons.sort_by_key(|l| l.order);
    Ok(lessons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lesson::Segment;

    #[test]
    fn every_lesson_file_is_embedded_and_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../lessons");
        let mut on_disk: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.ends_with(".md")).collect();
        on_disk.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "lessons/ and web/src/lessons.rs::FILES must list the same files");
        // Embedded text equals the file (include_str! paths point at the right files).
        for (name, text) in FILES {
            assert_eq!(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap(), text, "{name}");
        }
        let lessons = all().unwrap_or_else(|e| panic!("{e}"));
        let orders: Vec<u32> = lessons.iter().map(|l| l.order).collect();
        let mut unique = orders.clone();
        unique.dedup();
        assert_eq!(orders, unique, "two lessons share an order");
        for l in &lessons {
            assert!(l.segments.iter().any(|s| matches!(s, Segment::Html(_))), "{} has no prose", l.slug);
        }
    }
}
