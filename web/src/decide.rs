//! The decision walk-through of lesson 2 ("When not to fine-tune") as data: yes/no
//! questions that end in a recommendation. The order follows the usual advice (prompt, then
//! few-shot examples, then retrieval for missing knowledge, then fine-tuning for behaviour),
//! and each step says why, so the reader learns the reasoning and not only the answer.

/// A point in the walk-through.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Node {
    Question { text: &'static str, why: &'static str, yes: usize, no: usize },
    Outcome { title: &'static str, text: &'static str },
}

/// The walk-through starts at index 0.
pub const NODES: &[Node] = &[
    // 0
    Node::Question {
        text: "Does a clear, specific prompt already give good enough answers on a set of real test cases?",
        why: "A prompt costs minutes to change and nothing to train. Write down 20 or more real inputs with the answers you want first: they are your evaluation set whatever you choose next.",
        yes: 1,
        no: 2,
    },
    // 1
    Node::Outcome {
        title: "Ship the prompt; do not fine-tune",
        text: "It already works, and it stays easy to change. Keep the test cases and re-run them whenever the model or the prompt changes.",
    },
    // 2
    Node::Question {
        text: "Do a few worked examples in the prompt (few-shot) fix the failures?",
        why: "Examples show the format and the judgement you want; models follow them well. They cost prompt tokens on every request, but no training.",
        yes: 3,
        no: 4,
    },
    // 3
    Node::Question {
        text: "Do the examples fit comfortably in the context window, at a per-request cost you accept?",
        why: "Examples in a prompt are bounded by the context window and paid for on every call (prompt caching lowers the cost of a fixed prefix, not the bound). Fine-tuning data has no such limit.",
        yes: 5,
        no: 6,
    },
    // 4
    Node::Question {
        text: "Is the failure about knowledge the model lacks, or facts that change (your documents, prices, recent events)?",
        why: "Knowledge is better looked up than trained in: Ovadia et al. (2024) found retrieval beat fine-tuning for injecting new facts, and retrieved text can be updated and cited.",
        yes: 7,
        no: 8,
    },
    // 5
    Node::Outcome {
        title: "Use few-shot prompting",
        text: "The behaviour is reachable without training. Fine-tuning would add a training pipeline, a model to host, and the risk of forgetting, for no gain.",
    },
    // 6
    Node::Outcome {
        title: "Fine-tune, using your examples as training data",
        text: "Examples help but do not fit or cost too much per call: training bakes them into the weights. Start with a parameter-efficient method (e.g. LoRA), keep a held-out set, and check other tasks for forgetting.",
    },
    // 7
    Node::Outcome {
        title: "Use retrieval (RAG)",
        text: "Put the knowledge in a searchable store and the relevant passages in the prompt. Fine-tune later only if the model also needs a new behaviour, such as answering in your format from what it retrieved.",
    },
    // 8
    Node::Question {
        text: "Is it about behaviour (a format, a style, a narrow task done reliably), and can you collect hundreds of good examples?",
        why: "Fine-tuning teaches behaviour from examples. Without examples of the behaviour, neither few-shot prompting nor training can learn it.",
        yes: 9,
        no: 10,
    },
    // 9
    Node::Outcome {
        title: "Fine-tune",
        text: "This is what fine-tuning is for. Budget for the up-front compute, evaluate on held-out data, and measure the cost: a model tuned narrowly can get worse at other tasks (catastrophic forgetting, the alignment tax).",
    },
    // 10
    Node::Outcome {
        title: "Collect examples first",
        text: "Improve the prompt, and gather real inputs with the outputs you want. With them you can try few-shot prompting again, and fine-tune if that is not enough.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path from the start ends in an outcome, no question leads back to itself, and
    /// every node is reachable.
    #[test]
    fn the_walk_through_is_a_tree_of_outcomes() {
        let mut seen = vec![false; NODES.len()];
        fn walk(i: usize, depth: usize, seen: &mut Vec<bool>) -> usize {
            assert!(depth < NODES.len(), "cycle through node {i}");
            seen[i] = true;
            match NODES[i] {
                Node::Outcome { .. } => 1,
                Node::Question { yes, no, .. } => {
                    assert!(yes < NODES.len() && no < NODES.len() && yes != no, "node {i}");
                    walk(yes, depth + 1, seen) + walk(no, depth + 1, seen)
                }
            }
        }
        let outcomes = walk(0, 0, &mut seen);
        assert_eq!(outcomes, NODES.iter().filter(|n| matches!(n, Node::Outcome { .. })).count());
        assert!(seen.iter().all(|&s| s), "unreachable nodes: {seen:?}");
    }
}
