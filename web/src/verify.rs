//! Settings of the `verify` widget: the "How we know these numbers are true" page lists
//! the reference checks of `tinytune::verify` (the same registry `cargo test` and
//! `tinytune verify` run) and, on a button, runs them one by one in the worker on the
//! reader's backend. Each check's fixture files are fetched from `fixtures/` (the
//! repository's `tests/fixtures`, copied into the site) when it runs, never with the page.

use serde::{Deserialize, Serialize};

use crate::settings::{Field, Settings};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyParams {
    /// `all`, or one group of checks (`peft`, `bitsandbytes`, …) or one check.
    pub checks: String,
    /// The one check a request runs (set by the page for each request; not a setting).
    pub run: Option<String>,
}

impl Default for VerifyParams {
    fn default() -> Self {
        Self { checks: "all".into(), run: None }
    }
}

impl VerifyParams {
    /// The checks the page lists, without their measurements (the worker runs them), so
    /// that the page does not link the code they run.
    pub fn selected(&self) -> Result<Vec<tinytune::verify::Check>, String> {
        tinytune::verify::select_catalog(&self.filters())
    }

    fn filters(&self) -> Vec<String> {
        if self.checks == "all" { Vec::new() } else { vec![self.checks.clone()] }
    }

    /// The native command that runs the same checks.
    pub fn command(&self) -> String {
        match self.checks.as_str() {
            "all" => "tinytune verify".into(),
            one => format!("tinytune verify --check {one}"),
        }
    }
}

/// Where the site serves the fixtures (trunk copies `tests/fixtures` there).
pub const FIXTURES_URL: &str = "fixtures";

impl Settings for VerifyParams {
    const NAME: &'static str = "verify";
    fn fields() -> Vec<Field<Self>> {
        vec![Field {
            key: "checks",
            get: |p| p.checks.clone(),
            set: |p, v| {
                if v != "all" {
                    tinytune::verify::select_catalog(&[v.to_string()])
                        .map_err(|e| e.replace("--check ", "").replacen(": no check", ": choose all, or a check or group; no check", 1))?;
                }
                p.checks = v.to_string();
                Ok(())
            },
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widgets::Widget;

    #[test]
    fn a_group_or_one_check_selects_and_a_typo_names_the_groups() {
        let mut w = Widget::named("verify").unwrap();
        w.set("checks", "peft").unwrap();
        let Widget::Verify(p) = &w else { panic!() };
        assert!(p.selected().unwrap().iter().all(|c| c.group() == "peft"));
        assert_eq!(p.command(), "tinytune verify --check peft");
        let e = w.set("checks", "pfet").unwrap_err();
        assert!(e.contains("pfet") && e.contains("bitsandbytes"), "{e}");
        assert_eq!(VerifyParams::default().selected().unwrap().len(), tinytune::verify::checks().len());
    }

    /// The site copies the repository's fixtures folder, so every file a check lists is
    /// served under [`FIXTURES_URL`].
    #[test]
    fn the_site_serves_every_fixture_a_check_reads() {
        let index = include_str!("../../index.html");
        assert!(index.contains(r#"rel="copy-dir" href="tests/fixtures""#), "index.html copies tests/fixtures");
        // trunk names a copied folder by its last component.
        assert_eq!("tests/fixtures".rsplit('/').next(), Some(FIXTURES_URL));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for c in tinytune::verify::checks() {
            for f in &c.files {
                assert!(root.join(f).is_file(), "{}: {f} is not in tests/fixtures", c.name);
            }
        }
    }
}
