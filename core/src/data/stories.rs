//! A generated pre-training corpus of very short, very simple stories.
//!
//! A model of about a million parameters, trained for minutes on a CPU, can
//! only learn a small language, so these stories use a few dozen words, a
//! handful of sentence patterns, and one fixed shape: a child goes somewhere
//! with a coloured toy, meets a friend, a few small things happen, and the
//! story ends by saying how the child felt. The facts of each story (who,
//! where, what, which colour, which feeling) are returned with the text so the
//! question-answering task can ask about them.

use super::{Rng, Split, collect, fill};

/// A child's name and whether the story calls them "she" or "he".
pub(crate) const NAMES: [(&str, bool); 16] = [
    ("lily", true),
    ("tom", false),
    ("mia", true),
    ("ben", false),
    ("anna", true),
    ("max", false),
    ("emma", true),
    ("leo", false),
    ("zoe", true),
    ("jack", false),
    ("lucy", true),
    ("sam", false),
    ("ella", true),
    ("finn", false),
    ("rosa", true),
    ("omar", false),
];

/// Toys and things a child can carry; each is one word.
pub(crate) const OBJECTS: [&str; 16] =
    ["ball", "kite", "boat", "book", "hat", "drum", "doll", "train", "box", "bag", "cup", "bell", "shell", "balloon", "truck", "robot"];

/// Places a child can go to; each takes "the" ("went to the park").
pub(crate) const PLACES: [&str; 12] = ["park", "garden", "beach", "farm", "forest", "lake", "zoo", "hill", "school", "market", "river", "pond"];

/// Colours for objects. Colour words appear nowhere else in a story, so
/// "what color was the ball?" has exactly one answer in the text.
pub(crate) const COLORS: [&str; 10] = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "brown"];

/// The feelings a story can end with; each ending template states one of them.
pub(crate) const FEELINGS: [&str; 5] = ["happy", "sad", "tired", "proud", "scared"];

/// The fewest sentences a story can have: an opening, a meeting and an ending.
const MIN_SENTENCES: usize = 3;
/// The most sentences a story can have; eight keeps stories under about 320 characters.
const MAX_SENTENCES: usize = 8;

/// Opening sentences. Each names the hero, the place as "the {place}", and the
/// object as "a {color} {object}", so questions about them are answerable.
const OPENINGS: [&str; 5] = [
    "{hero} went to the {place} with a {color} {object}.",
    "one day, {hero} took a {color} {object} to the {place}.",
    "{hero} had a {color} {object}. {sub} took it to the {place}.",
    "in the morning, {hero} ran to the {place} with a {color} {object}.",
    "{hero} got a {color} {object} and went to the {place}.",
];

/// Meeting sentences; each names the friend.
const MEETINGS: [&str; 4] =
    ["{sub} met {friend} there.", "at the {place}, {sub} saw {friend}.", "{friend} was there too.", "there {sub} found {pos} friend {friend}."];

/// Middle sentences. None of them names a colour or a feeling, so they never
/// contradict the facts that the questions ask about.
const MIDDLES: [&str; 12] = [
    "they played with the {object} all day.",
    "the sun was warm.",
    "they ran and jumped on the grass.",
    "{friend} liked the {object} a lot.",
    "{hero} showed {friend} how to play.",
    "a little bird sang in a tree.",
    "{sub} held {pos} {object} tight.",
    "they sat down and had a snack.",
    "{friend} laughed and laughed.",
    "they made up a funny game.",
    "a small dog came to say hello.",
    "they looked up at the big clouds.",
];

/// Endings for each feeling, in the order of [`FEELINGS`]. Each gives a reason
/// and then states the feeling as a plain word, so the label is in the text.
const ENDINGS: [[&str; 3]; 5] = [
    ["they had lots of fun, and {hero} was happy.", "at the end of the day, {hero} felt happy.", "{hero} was happy to have a friend like {friend}."],
    ["then the {object} broke, and {hero} was sad.", "{hero} lost the {object} on the way home. {sub} felt sad.", "then it began to rain, so {hero} was sad."],
    [
        "they played until the sun went down, so {hero} was tired.",
        "the walk home was long, and {hero} felt tired.",
        "after all that running, {hero} was very tired.",
    ],
    [
        "{hero} shared the {object} with {friend} and felt proud.",
        "{hero} helped {friend} fix a toy, and {sub} was proud.",
        "{hero} climbed up high all alone and was proud.",
    ],
    [
        "then a big dog barked at them, and {hero} was scared.",
        "the sky got dark, and {hero} felt scared.",
        "a loud noise came from the trees, so {hero} was scared.",
    ],
];

/// How big a story world to draw from: how many names, objects and places, and how many sentences.
///
/// Counts are clamped when used: `names` to 2..=16 (a story needs a hero and
/// a different friend), `objects` to 1..=16, `places` to 1..=12, and the
/// sentence range to 3..=8 with `sentences_max >= sentences_min`. Smaller
/// worlds make a corpus that a tiny model can learn faster.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoryConfig {
    /// How many children's names to use (the first `names` of a fixed list).
    pub names: usize,
    /// How many object words to use.
    pub objects: usize,
    /// How many place words to use.
    pub places: usize,
    /// The fewest sentences in a story (at least 3).
    pub sentences_min: usize,
    /// The most sentences in a story (at most 8).
    pub sentences_max: usize,
}

impl Default for StoryConfig {
    /// 12 names, 12 objects, 10 places and 4 to 6 sentences: stories of about 110 to 240 characters.
    fn default() -> Self {
        StoryConfig { names: 12, objects: 12, places: 10, sentences_min: 4, sentences_max: 6 }
    }
}

impl StoryConfig {
    /// The largest world: every built-in word and the full 3 to 8 sentence range.
    pub fn max() -> Self {
        StoryConfig { names: NAMES.len(), objects: OBJECTS.len(), places: PLACES.len(), sentences_min: MIN_SENTENCES, sentences_max: MAX_SENTENCES }
    }

    /// The same config with every count moved into its valid range.
    pub fn clamped(&self) -> Self {
        let sentences_min = self.sentences_min.clamp(MIN_SENTENCES, MAX_SENTENCES);
        StoryConfig {
            names: self.names.clamp(2, NAMES.len()),
            objects: self.objects.clamp(1, OBJECTS.len()),
            places: self.places.clamp(1, PLACES.len()),
            sentences_min,
            sentences_max: self.sentences_max.clamp(sentences_min, MAX_SENTENCES),
        }
    }
}

/// One generated story and the facts it states.
#[derive(Clone, Debug, PartialEq)]
pub struct Story {
    /// The story, lowercase, ending with a newline.
    pub text: String,
    /// The main character's name.
    pub hero: String,
    /// The object the hero brings (one word, e.g. "kite").
    pub object: String,
    /// The object's colour.
    pub color: String,
    /// Where the hero goes (without "the").
    pub place: String,
    /// The other child the hero meets.
    pub friend: String,
    /// How the hero feels at the end: happy, sad, tired, proud or scared.
    pub feeling: String,
}

/// Generates one story from `rng`, for example:
/// "tom had a blue cup. he took it to the market. at the market, he saw anna.
/// tom showed anna how to play. at the end of the day, tom felt happy.\n"
pub fn story(config: &StoryConfig, rng: &mut Rng) -> Story {
    let c = config.clamped();
    let hero_index = rng.below(c.names);
    // Drawing from one fewer name and skipping the hero keeps the friend
    // uniform over the other names without a retry loop.
    let mut friend_index = rng.below(c.names - 1);
    if friend_index >= hero_index {
        friend_index += 1;
    }
    let (hero, is_she) = NAMES[hero_index];
    let friend = NAMES[friend_index].0;
    let object = OBJECTS[rng.below(c.objects)];
    let place = PLACES[rng.below(c.places)];
    let color = *rng.choose(&COLORS);
    let feeling_index = rng.below(FEELINGS.len());
    let (sub, pos) = if is_she { ("she", "her") } else { ("he", "his") };

    let sentences = c.sentences_min + rng.below(c.sentences_max - c.sentences_min + 1);
    let mut templates = vec![*rng.choose(&OPENINGS), *rng.choose(&MEETINGS)];
    // Middle sentences are drawn without repeats, so stories do not stutter.
    let mut middles = MIDDLES;
    rng.shuffle(&mut middles);
    templates.extend_from_slice(&middles[..sentences - MIN_SENTENCES]);
    templates.push(*rng.choose(&ENDINGS[feeling_index]));

    let slots = [("hero", hero), ("friend", friend), ("object", object), ("color", color), ("place", place), ("sub", sub), ("pos", pos)];
    let mut text = templates.iter().map(|t| fill(t, &slots)).collect::<Vec<_>>().join(" ");
    text.push('\n');
    Story {
        text,
        hero: hero.to_string(),
        object: object.to_string(),
        color: color.to_string(),
        place: place.to_string(),
        friend: friend.to_string(),
        feeling: FEELINGS[feeling_index].to_string(),
    }
}

/// n stories of `split`, deterministic in (config, seed, split, n); the first k of n are the same as asking for k.
///
/// Stories may repeat within a split (small configs have fewer distinct
/// stories), but a story never appears in both splits.
pub fn corpus(config: &StoryConfig, seed: u64, split: Split, n: usize) -> Vec<String> {
    collect(seed, "stories", split, n, |rng| story(config, rng).text, |t| t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_state_their_facts_and_have_the_right_length() {
        let mut rng = Rng::new(4);
        let config = StoryConfig::default();
        let mut lengths = Vec::new();
        for _ in 0..2000 {
            let s = story(&config, &mut rng);
            assert_ne!(s.hero, s.friend);
            assert!(s.text.ends_with(".\n") && s.text.matches('\n').count() == 1);
            assert!(s.text.starts_with(&s.hero) || s.text.contains(&format!(" {} ", s.hero)));
            assert!(s.text.contains(&format!("the {}", s.place)));
            assert!(s.text.contains(&format!("a {} {}", s.color, s.object)));
            assert!(s.text.contains(&s.friend) && s.text.contains(&s.feeling));
            // Exactly one colour word and one feeling word, so answers are unambiguous.
            let words: Vec<&str> = s.text.split(|c: char| !c.is_ascii_lowercase()).collect();
            assert_eq!(words.iter().filter(|w| COLORS.contains(w)).count(), 1, "{}", s.text);
            assert_eq!(words.iter().filter(|w| FEELINGS.contains(w)).count(), 1, "{}", s.text);
            lengths.push(s.text.len());
        }
        lengths.sort();
        let (lo, median, hi) = (lengths[0], lengths[lengths.len() / 2], lengths[lengths.len() - 1]);
        assert!(lo >= 90 && hi <= 360 && (150..=260).contains(&median), "{lo} {median} {hi}");
    }

    #[test]
    fn config_clamps_to_word_lists() {
        let tiny = StoryConfig { names: 0, objects: 0, places: 99, sentences_min: 9, sentences_max: 1 };
        assert_eq!(tiny.clamped(), StoryConfig { names: 2, objects: 1, places: 12, sentences_min: 8, sentences_max: 8 });
        let mut rng = Rng::new(5);
        let s = story(&tiny, &mut rng);
        assert!(["lily", "tom"].contains(&s.hero.as_str()) && s.object == "ball");
        // Eight templates; an opening or ending may hold two sentences.
        assert!((8..=10).contains(&s.text.matches('.').count()), "{}", s.text);
        let max = StoryConfig::max();
        let texts = corpus(&max, 3, Split::Train, 300);
        assert!(texts.iter().any(|t| t.contains("omar")) && texts.iter().any(|t| t.contains("pond")));
    }
}
