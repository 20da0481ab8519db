//! The `verify` widget: the reference checks of `tinytune::verify`, listed with their
//! libraries, tolerances and fixture scripts; the button runs them one request at a time
//! in the worker on the reader's backend and fills in each row as its answer arrives.

use leptos::prelude::*;
use tinytune::verify::Outcome;

use super::client;
use crate::verify::VerifyParams;
use crate::widgets::Widget;

fn params(w: &Widget) -> VerifyParams {
    match w {
        Widget::Verify(p) => p.clone(),
        _ => VerifyParams::default(),
    }
}

/// A check as the table lists it before it runs.
#[derive(Clone)]
struct Row {
    name: String,
    what: String,
    library: String,
    tolerance: String,
    script: String,
    on_device: bool,
}

/// Runs `rows[i..]` one after another, storing each answer.
fn run_from(i: usize, p: VerifyParams, rows: StoredValue<Vec<Row>>, results: RwSignal<Vec<Option<Result<Outcome, String>>>>, busy: RwSignal<bool>) {
    let Some(name) = rows.with_value(|r| r.get(i).map(|r| r.name.clone())) else {
        busy.set(false);
        return;
    };
    let ask = VerifyParams { run: Some(name), ..p.clone() };
    client::ask(ask, move |r| {
        results.update(|v| v[i] = Some(r));
        run_from(i + 1, p.clone(), rows, results, busy);
    });
}

#[component]
pub fn VerifyWidget(state: RwSignal<Widget>) -> impl IntoView {
    let p = params(&state.get_untracked());
    let checks = match p.selected() {
        Ok(c) => c,
        Err(e) => return view! { <p class="error">{e}</p> }.into_any(),
    };
    let rows: Vec<Row> = checks
        .iter()
        .map(|c| Row {
            name: c.name.clone(),
            what: c.what.clone(),
            library: c.library.to_string(),
            tolerance: c.tolerance.to_string(),
            script: c.script.to_string(),
            on_device: c.on_device,
        })
        .collect();
    let n = rows.len();
    let libraries = {
        let mut l: Vec<String> = rows.iter().map(|r| r.library.clone()).collect();
        l.sort();
        l.dedup();
        l
    };
    let rows = StoredValue::new(rows);
    let results = RwSignal::new(vec![None::<Result<Outcome, String>>; n]);
    let busy = RwSignal::new(false);
    let command = p.command();
    let run = {
        let p = p.clone();
        move |_| {
            busy.set(true);
            results.set(vec![None; n]);
            run_from(0, p.clone(), rows, results, busy);
        }
    };
    let status = move || {
        let r = results.get();
        let done = r.iter().filter(|x| x.is_some()).count();
        let passed = r.iter().filter(|x| matches!(x, Some(Ok(o)) if o.passed)).count();
        if done == 0 {
            format!("{n} checks against {}. Nothing has run yet.", libraries.join(", "))
        } else if done < n {
            format!("{done} of {n} run, {passed} passed so far…")
        } else {
            format!("{passed} of {n} checks passed on this page's backend.")
        }
    };
    let table = move || {
        let r = results.get();
        rows.with_value(|rows| {
            rows.iter()
                .zip(r)
                .map(|(row, out)| {
                    let (reference, measured, result, detail) = match &out {
                        None => (row.library.clone(), String::new(), String::new(), String::new()),
                        Some(Ok(o)) => (o.reference.clone(), o.measured(), if o.passed { "pass" } else { "FAIL" }.to_string(), o.detail.clone()),
                        Some(Err(e)) => (row.library.clone(), "—".into(), "FAIL".into(), e.clone()),
                    };
                    let state = match result.as_str() {
                        "pass" => "pass",
                        "FAIL" => "fail",
                        _ => "",
                    };
                    view! {
                        <tr data-check=row.name.clone() data-result=state>
                            <td><code>{row.name.clone()}</code></td>
                            <td>{row.what.clone()}<br/><span class="status">{format!("fixture: {}", row.script)}</span></td>
                            <td>{reference}</td>
                            <td>{row.tolerance.clone()}</td>
                            <td class="num" data-testid="measured">{measured}</td>
                            <td class=format!("result {state}")>{result}</td>
                            <td>{if row.on_device { "backend" } else { "CPU" }}</td>
                            <td class="status">{detail}</td>
                        </tr>
                    }
                })
                .collect_view()
        })
    };
    view! {
        <div class="widget verify" data-widget="verify">
            <div class="buttons">
                <button data-testid="verify-run" on:click=run disabled=move || busy.get()>
                    {move || if busy.get() { "Running the checks…".to_string() } else { format!("Run the {n} checks here") }}
                </button>
            </div>
            <p class="status" data-testid="verify-status">{status}</p>
            <table class="results" data-testid="verify-table">
                <thead><tr>
                    <th>"check"</th><th>"what is compared"</th><th>"reference"</th><th>"tolerance"</th>
                    <th>"measured"</th><th>"result"</th><th>"ran on"</th><th>"detail"</th>
                </tr></thead>
                <tbody>{table}</tbody>
            </table>
            <p class="command"><code>{command}</code></p>
        </div>
    }
    .into_any()
}

impl super::WidgetView for crate::verify::VerifyParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <VerifyWidget state=state /> }.into_any()
    }
}
