//! Generated fine-tuning tasks whose effect shows clearly in a tiny model's samples.
//!
//! Each task turns the story world into prompt/response pairs. A model that was
//! only pre-trained on stories keeps writing stories after a prompt; after
//! fine-tuning it should answer in the task's format instead, and the answers
//! can be scored by exact match. Every response starts with a space and ends
//! with a newline, so a model learns where an answer stops and a sampler can
//! stop at the first newline.

use super::stories::{COLORS, NAMES, OBJECTS, PLACES, StoryConfig, story};
use super::{Rng, Split, collect, fill};

/// A fine-tuning task: which kind of prompt/response pairs to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Answer a question about a story that comes before it in the prompt:
    /// prompt "emma got a brown book and went to the market. tom was there too.
    /// a little bird sang in a tree. she held her book tight. emma was happy to
    /// have a friend like tom.\nquestion: who did emma meet?\nanswer:", response " tom.\n".
    StoryQa,
    /// Say whether a short line of text sounds happy or sad:
    /// prompt "text: i think the zoo is not fun.\nfeeling:", response " sad\n".
    Sentiment,
    /// Turn a sentence into a JSON record of who, what, which colour and where:
    /// prompt "text: tom has a blue kite in the garden.\njson:", response
    /// ` {"name": "tom", "object": "kite", "color": "blue", "place": "garden"}` followed by a newline.
    JsonExtract,
}

/// One fine-tuning example: the model sees `prompt` and should continue it with `response`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Example {
    /// The text given to the model; it ends with a keyword and a colon ("answer:").
    pub prompt: String,
    /// The reference continuation; it starts with a space and ends with a newline.
    pub response: String,
    /// The response is an assistant turn rendered by a chat template, which ends it with
    /// the template's own end-of-turn text; no `<|endoftext|>` is appended.
    #[serde(default)]
    pub chat: bool,
}

impl Example {
    /// The whole training text: the prompt followed by the response.
    pub fn text(&self) -> String {
        format!("{}{}", self.prompt, self.response)
    }
}

impl Task {
    /// Every task, in the order a UI should list them.
    pub const ALL: [Task; 3] = [Task::StoryQa, Task::Sentiment, Task::JsonExtract];

    /// The task's command-line name: "story-qa", "sentiment" or "json-extract".
    pub fn name(&self) -> &'static str {
        match self {
            Task::StoryQa => "story-qa",
            Task::Sentiment => "sentiment",
            Task::JsonExtract => "json-extract",
        }
    }

    /// One sentence describing the task, for a UI or `--help`.
    pub fn description(&self) -> &'static str {
        match self {
            Task::StoryQa => "Read a story, then answer who, where, what or how someone felt.",
            Task::Sentiment => "Say if a line about a toy or a place sounds happy or sad.",
            Task::JsonExtract => "Turn a sentence into JSON: its name, object, color and place.",
        }
    }

    /// n examples of `split`, deterministic in (task, seed, split, n); the first k of n are the same as asking for k.
    ///
    /// Examples may repeat within a split, but an example's full text never
    /// appears in both splits. Each task can make millions of distinct texts.
    pub fn examples(&self, seed: u64, split: Split, n: usize) -> Vec<Example> {
        let stream = format!("task/{}", self.name());
        collect(seed, &stream, split, n, |r| self.candidate(r), Example::text)
    }

    /// Score a model's generated response against the reference: exact match after trimming, for the accuracy column.
    ///
    /// Only the first line of `generated` counts, because the model is meant
    /// to stop at the newline; anything it writes after that is ignored.
    pub fn is_correct(&self, example: &Example, generated: &str) -> bool {
        let first_line = generated.split('\n').next().unwrap_or("");
        first_line.trim() == example.response.trim()
    }

    /// A verifiable reward for a generated response, in [0, 1] (what GRPO learns from):
    /// story-qa and sentiment score 1 for the exact answer ([`Task::is_correct`]);
    /// json-extract scores 1 when the first line is a JSON object with exactly the
    /// reference's fields and values, in any order and spacing, and 0 for anything else,
    /// invalid JSON included.
    pub fn reward(&self, example: &Example, generated: &str) -> f64 {
        let ok = match self {
            Task::JsonExtract => {
                let first_line = generated.split('\n').next().unwrap_or("");
                let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).ok().filter(|v| v.is_object());
                matches!((parse(first_line), parse(&example.response)), (Some(a), Some(b)) if a == b)
            }
            _ => self.is_correct(example, generated),
        };
        if ok { 1.0 } else { 0.0 }
    }

    /// One random example, before the split filter.
    pub(crate) fn candidate(&self, rng: &mut Rng) -> Example {
        match self {
            Task::StoryQa => story_qa(rng),
            Task::Sentiment => sentiment(rng),
            Task::JsonExtract => json_extract(rng),
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        Task::ALL.into_iter().find(|t| t.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
            format!("unknown task '{s}'; choose one of {}", names.join(", "))
        })
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A story followed by one question whose answer the story states word for word.
fn story_qa(rng: &mut Rng) -> Example {
    let s = story(&StoryConfig::default(), rng);
    let (hero, object, color) = (&s.hero, &s.object, &s.color);
    let (question, answer) = match rng.below(5) {
        0 => (format!("where did {hero} go?"), format!("the {}", s.place)),
        1 => (format!("who did {hero} meet?"), s.friend.clone()),
        2 => (format!("what did {hero} have?"), format!("a {color} {object}")),
        3 => (format!("what color was the {object}?"), color.clone()),
        _ => (format!("how did {hero} feel?"), s.feeling.clone()),
    };
    Example { prompt: format!("{}question: {question}\nanswer:", s.text), response: format!(" {answer}.\n"), chat: false }
}

/// Adjectives that make a line sound happy.
const HAPPY_WORDS: [&str; 6] = ["fun", "great", "nice", "lovely", "good", "so much fun"];

/// Adjectives that make a line sound sad.
const SAD_WORDS: [&str; 6] = ["boring", "bad", "awful", "too cold", "broken", "dull"];

/// The adjectives that still read naturally after "not": "not boring" is
/// praise, but "not too cold" or "not so much fun" would be muddled.
const NEGATABLE: [&str; 7] = ["fun", "great", "nice", "good", "boring", "bad", "awful"];

/// Things to have an opinion about, with the verb that fits their tense.
const SUBJECTS: [(&str, &str); 7] = [
    ("my {color} {object}", "is"),
    ("the {place}", "is"),
    ("the {color} {object} from {name}", "is"),
    ("our trip to the {place}", "was"),
    ("the new {object}", "is"),
    ("the game at the {place}", "was"),
    ("the day at the {place}", "was"),
];

/// Opening sentences that set the scene before "it was ..." gives the opinion.
const LEADS: [(&str, &str); 5] = [
    ("{name} went to the {place}.", "was"),
    ("i played with my {color} {object}.", "was"),
    ("we went to the {place} today.", "was"),
    ("{name} got a {color} {object}.", "is"),
    ("i have a {color} {object}.", "is"),
];

/// Things a person can love or hate.
const LIKED_THINGS: [&str; 5] = ["my {color} {object}", "the {place}", "the {color} {object}", "going to the {place}", "playing with the {object}"];

/// A one- or two-sentence opinion whose feeling follows from its words.
///
/// The label is drawn first, so happy and sad are equally likely. Each line
/// holds exactly one opinion word; a "not" in front of it (about a third of
/// lines) flips its meaning, so the model cannot just look up single words.
fn sentiment(rng: &mut Rng) -> Example {
    let happy = rng.chance(0.5);
    let name = NAMES[rng.below(NAMES.len())].0;
    let slots = [("name", name), ("color", *rng.choose(&COLORS)), ("object", *rng.choose(&OBJECTS)), ("place", *rng.choose(&PLACES))];
    let end = if rng.chance(0.2) { "!" } else { "." };
    let line = if rng.chance(0.75) {
        // An adjective, maybe negated: sad lines use "not" with a happy word
        // and happy lines use "not" with a negatable sad word.
        let negate = rng.chance(0.35);
        let words = if happy ^ negate { HAPPY_WORDS } else { SAD_WORDS };
        let choices: Vec<&str> = words.into_iter().filter(|w| !negate || NEGATABLE.contains(w)).collect();
        let adjective = *rng.choose(&choices);
        let not = if negate { " not" } else { "" };
        match rng.below(4) {
            3 => {
                let (lead, verb) = *rng.choose(&LEADS);
                format!("{} it {verb}{not} {adjective}{end}", fill(lead, &slots))
            }
            frame => {
                let (subject, verb) = *rng.choose(&SUBJECTS);
                let subject = fill(subject, &slots);
                let before = fill(["", "i think ", "{name} said "][frame], &slots);
                format!("{before}{subject} {verb}{not} {adjective}{end}")
            }
        }
    } else {
        let first_person = rng.chance(0.5);
        let verbs: &[&str] = match (happy, first_person) {
            (true, true) => &["love", "like"],
            (true, false) => &["loves", "likes"],
            (false, true) => &["hate", "do not like"],
            (false, false) => &["hates", "does not like"],
        };
        let who = if first_person { "i" } else { name };
        let template = *rng.choose(&LIKED_THINGS);
        let thing = fill(template, &slots);
        format!("{who} {} {thing}{end}", rng.choose(verbs))
    };
    let label = if happy { "happy" } else { "sad" };
    Example { prompt: format!("text: {line}\nfeeling:"), response: format!(" {label}\n"), chat: false }
}

/// Sentences that each state a name, an object with its colour, and a place.
const RECORD_SENTENCES: [&str; 8] = [
    "{name} has a {color} {object} in the {place}.",
    "in the {place}, {name} found a {color} {object}.",
    "{name} took a {color} {object} to the {place}.",
    "at the {place}, {name} played with a {color} {object}.",
    "{name} lost a {color} {object} at the {place}.",
    "a {color} {object} was in the {place}, and {name} saw it.",
    "{name} went to the {place}. {sub} had a {color} {object}.",
    "the {color} {object} that {name} made is at the {place}.",
];

/// A sentence and the JSON record of its four facts, with keys in a fixed order.
fn json_extract(rng: &mut Rng) -> Example {
    let (name, is_she) = *rng.choose(&NAMES);
    let object = *rng.choose(&OBJECTS);
    let color = *rng.choose(&COLORS);
    let place = *rng.choose(&PLACES);
    let slots = [("name", name), ("object", object), ("color", color), ("place", place), ("sub", if is_she { "she" } else { "he" })];
    let template = *rng.choose(&RECORD_SENTENCES);
    let sentence = fill(template, &slots);
    Example {
        prompt: format!("text: {sentence}\njson:"),
        response: format!(" {{\"name\": \"{name}\", \"object\": \"{object}\", \"color\": \"{color}\", \"place\": \"{place}\"}}\n"),
        chat: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn examples_are_well_formed() {
        for task in Task::ALL {
            for ex in task.examples(1, Split::Train, 1000) {
                assert!(ex.text().len() < 400, "{task}: {} chars", ex.text().len());
                assert!(ex.response.starts_with(' ') && ex.response.ends_with('\n'));
                assert_eq!(ex.response.matches('\n').count(), 1);
                assert!(ex.prompt.ends_with(':') && !ex.prompt.ends_with(' '));
            }
        }
    }

    #[test]
    fn story_answers_are_stated_in_the_story() {
        let mut kinds = HashSet::new();
        for ex in Task::StoryQa.examples(4, Split::Train, 1000) {
            let (story, question) = ex.prompt.split_once("question: ").unwrap();
            assert!(story.ends_with(".\n") && question.ends_with("?\nanswer:"));
            let answer = ex.response.trim().strip_suffix('.').unwrap();
            assert!(story.contains(answer), "{answer:?} not in {story:?}");
            kinds.insert(question.split(' ').take(2).collect::<Vec<_>>().join(" "));
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        // Most examples should fit a 256-character context whole.
        let short = Task::StoryQa.examples(4, Split::Train, 1000).iter().filter(|e| e.text().len() < 256).count();
        assert!(short >= 800, "{short}");
    }

    #[test]
    fn sentiment_labels_are_balanced_and_follow_the_words() {
        let examples = Task::Sentiment.examples(5, Split::Train, 1000);
        let happy = examples.iter().filter(|e| e.response == " happy\n").count();
        assert!((400..=600).contains(&happy), "{happy}");
        // An independent reading of each line: its single opinion word, flipped by "not".
        let good = ["fun", "great", "nice", "lovely", "good", "love", "like", "loves", "likes"];
        let bad = ["boring", "bad", "awful", "cold", "broken", "dull", "hate", "hates"];
        let mut negated = 0;
        for ex in &examples {
            let words: Vec<&str> = ex.prompt.split(|c: char| !c.is_ascii_lowercase()).collect();
            let up = words.iter().filter(|w| good.contains(w)).count();
            let down = words.iter().filter(|w| bad.contains(w)).count();
            assert_eq!(up + down, 1, "{:?}", ex.prompt);
            let not = words.contains(&"not");
            negated += usize::from(not);
            let label = if (up == 1) != not { "happy" } else { "sad" };
            assert_eq!(ex.response, format!(" {label}\n"), "{:?}", ex.prompt);
        }
        assert!((150..=450).contains(&negated), "{negated}");
    }

    /// Parses a flat JSON object of string values, the only shape the task emits.
    fn parse_flat_object(s: &str) -> Option<Vec<(String, String)>> {
        let body = s.strip_prefix('{')?.strip_suffix('}')?;
        let mut fields = Vec::new();
        for pair in body.split(", ") {
            let (key, value) = pair.split_once(": ")?;
            let unquote = |x: &str| x.strip_prefix('"')?.strip_suffix('"').map(str::to_string);
            let (key, value) = (unquote(key)?, unquote(value)?);
            if key.contains('"') || value.contains('"') || value.is_empty() {
                return None;
            }
            fields.push((key, value));
        }
        Some(fields)
    }

    #[test]
    fn json_records_parse_and_match_the_sentence() {
        for ex in Task::JsonExtract.examples(6, Split::Train, 500) {
            let fields = parse_flat_object(ex.response.trim()).expect(&ex.response);
            let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["name", "object", "color", "place"]);
            let sentence = ex.prompt.strip_prefix("text: ").unwrap();
            assert!(fields.iter().all(|(_, v)| sentence.contains(v.as_str())), "{sentence}");
        }
        // Every sentence pattern must be held out sometimes, or eval would not
        // measure the whole task; a weak split hash once broke this. Blanking
        // the words that are facts maps each sentence back to its template.
        let shape = |s: &str, facts: &[&str]| -> Vec<String> {
            let blank = |w: &str| w.starts_with('{') || facts.contains(&w);
            s.split([' ', ',', '.']).map(|w| if blank(w) { "_".into() } else { w.into() }).collect()
        };
        let mut hits = [0usize; RECORD_SENTENCES.len()];
        for ex in Task::JsonExtract.examples(6, Split::Eval, 400) {
            let fields = parse_flat_object(ex.response.trim()).unwrap();
            let mut facts: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
            facts.extend(["she", "he"]);
            let sentence = &ex.prompt["text: ".len()..ex.prompt.len() - "\njson:".len()];
            let target = shape(sentence, &facts);
            let which = RECORD_SENTENCES.iter().position(|t| shape(t, &facts) == target);
            hits[which.unwrap()] += 1;
        }
        assert!(hits.iter().all(|&h| h >= 20), "{hits:?}");
        assert!(parse_flat_object(r#"{"name": "tom"}"#).is_some());
        assert!(parse_flat_object(r#"{"name": tom}"#).is_none());
    }

    #[test]
    fn scoring_names_and_parsing() {
        let ex = Example { prompt: "text: x\nfeeling:".into(), response: " happy\n".into(), chat: false };
        assert!(Task::Sentiment.is_correct(&ex, " happy\ntext: more"));
        assert!(Task::Sentiment.is_correct(&ex, "happy  "));
        assert!(!Task::Sentiment.is_correct(&ex, " sad\n"));
        assert!(!Task::Sentiment.is_correct(&ex, "\nhappy"));
        for task in Task::ALL {
            assert_eq!(task.to_string().parse::<Task>(), Ok(task));
            assert!(!task.description().is_empty());
        }
        assert_eq!("x".parse::<Task>(), Err("unknown task 'x'; choose one of story-qa, sentiment, json-extract".to_string()));
    }
}
