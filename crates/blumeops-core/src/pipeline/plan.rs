//! A container's step graph as data, without running anything: what `blumeops plan` prints.
//!
//! A stage is a chain of steps that other steps need as a whole: the container itself, every
//! container a copy reads from, and every point where two chains fork from a common prefix
//! (so shared steps are listed once). Stages are numbered in dependency order: a stage comes
//! after the stage it starts from and after every stage it copies from; the container being
//! planned is always the last stage. Step numbers run across all stages in that order.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use super::{Container, Node, Op};

/// A container's stages, in dependency order (the planned container last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Every stage, numbered from 1 in dependency order.
    pub stages: Vec<PlanStage>,
    /// Number of steps across all stages.
    pub total_steps: usize,
}

/// One stage: where it starts and its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStage {
    /// 1-based stage number.
    pub id: usize,
    /// What the stage starts from.
    pub base: PlanBase,
    /// The stage's own steps (for a stage on an image or scratch, the first is the `from`).
    pub steps: Vec<PlanStep>,
    /// Stages this stage copies files from, sorted, without duplicates.
    pub copies_from: Vec<usize>,
}

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PlanBase {
    /// An image in a registry, as written.
    Image(String),
    /// An empty image.
    Scratch,
    /// The result of another stage.
    Stage(usize),
}

/// One step of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    /// 1-based step number across the plan.
    pub index: usize,
    /// What the step does, as in progress output (secret values never appear).
    pub description: String,
    /// For a copy from another container: the stage it reads from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_from: Option<usize>,
}

impl fmt::Display for PlanBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(r) => write!(f, "{r}"),
            Self::Scratch => f.write_str("scratch"),
            Self::Stage(id) => write!(f, "stage {id}"),
        }
    }
}

impl fmt::Display for Plan {
    /// One block per stage:
    ///
    /// ```text
    /// stage 1 (from docker.io/library/busybox:1.37)
    ///   [1] from docker.io/library/busybox:1.37
    ///   [2] with_exec make
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, stage) in self.stages.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "stage {} (from {}", stage.id, stage.base)?;
            if !stage.copies_from.is_empty() {
                let ids: Vec<String> = stage.copies_from.iter().map(ToString::to_string).collect();
                write!(f, "; copies from stage {}", ids.join(", "))?;
            }
            if n + 1 == self.stages.len() {
                f.write_str("; final")?;
            }
            writeln!(f, ")")?;
            for step in &stage.steps {
                writeln!(f, "  [{}] {}", step.index, step.description)?;
            }
        }
        Ok(())
    }
}

impl Plan {
    /// One line per stage box: `stage N`, what it starts from, its step count, `final`.
    fn box_lines(&self, stage: &PlanStage) -> Vec<String> {
        let steps = stage.steps.len();
        let mut lines = vec![
            format!("stage {}", stage.id),
            format!("from {}", stage.base),
            format!("{steps} step{}", if steps == 1 { "" } else { "s" }),
        ];
        if self.stages.last().is_some_and(|last| last.id == stage.id) {
            lines.push("final image".to_owned());
        }
        lines
    }

    /// Edges: `(from, to, copy)`, a stage's base stage first, then the stages it copies
    /// from.
    fn edges(&self) -> Vec<(usize, usize, bool)> {
        let mut edges = Vec::new();
        for stage in &self.stages {
            if let PlanBase::Stage(base) = stage.base {
                edges.push((base, stage.id, false));
            }
            for &from in &stage.copies_from {
                edges.push((from, stage.id, true));
            }
        }
        edges
    }

    /// A mermaid flowchart (as forges render in markdown): a box per stage with its base
    /// and step count, solid arrows from a base stage, dotted `copy` arrows from the stages
    /// files are copied from, the final image's box marked `final`.
    pub fn to_mermaid(&self, title: &str) -> String {
        // Quotes and angle brackets would end the label or be read as HTML.
        let escape = |t: &str| {
            t.replace('&', "#amp;")
                .replace('"', "#quot;")
                .replace('<', "#lt;")
                .replace('>', "#gt;")
        };
        let mut out = format!("---\ntitle: {}\n---\nflowchart TD\n", escape(title));
        for stage in &self.stages {
            let label: Vec<String> = self.box_lines(stage).iter().map(|l| escape(l)).collect();
            out.push_str(&format!("  s{}[\"{}\"]\n", stage.id, label.join("<br/>")));
        }
        for (from, to, copy) in self.edges() {
            if copy {
                out.push_str(&format!("  s{from} -. copy .-> s{to}\n"));
            } else {
                out.push_str(&format!("  s{from} --> s{to}\n"));
            }
        }
        if let Some(last) = self.stages.last() {
            out.push_str(&format!(
                "  classDef final stroke-width:3px\n  class s{} final\n",
                last.id
            ));
        }
        out
    }

    /// A graphviz digraph of the same picture as [`Plan::to_mermaid`] (`dot -Tsvg`).
    pub fn to_dot(&self, title: &str) -> String {
        let escape = |t: &str| t.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!(
            "digraph plan {{\n  label=\"{}\";\n  labelloc=t;\n  rankdir=TB;\n  node [shape=box, fontname=\"sans-serif\"];\n",
            escape(title)
        );
        let last = self.stages.last().map(|s| s.id);
        for stage in &self.stages {
            let label: Vec<String> = self.box_lines(stage).iter().map(|l| escape(l)).collect();
            let extra = if Some(stage.id) == last {
                ", peripheries=2"
            } else {
                ""
            };
            out.push_str(&format!(
                "  s{} [label=\"{}\"{extra}];\n",
                stage.id,
                label.join("\\n")
            ));
        }
        for (from, to, copy) in self.edges() {
            if copy {
                out.push_str(&format!(
                    "  s{from} -> s{to} [style=dashed, label=\"copy\"];\n"
                ));
            } else {
                out.push_str(&format!("  s{from} -> s{to};\n"));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Identity of a node in the operation graph.
fn key(node: &Arc<Node>) -> usize {
    Arc::as_ptr(node) as usize
}

/// The copy source of an operation, if it reads from another container.
fn copy_source(op: &Op) -> Option<&Container> {
    super::op_source(op)
}

/// How the solver walks one stage: the nodes the plan's numbers belong to.
pub(super) struct StageLayout {
    /// The node the stage ends with.
    pub(super) tip: Arc<Node>,
    /// The stage it starts from, if any (its tip node).
    pub(super) base: Option<Arc<Node>>,
    /// The stage's own nodes in order, each with its step number.
    pub(super) own: Vec<(Arc<Node>, usize)>,
    /// What the stage is called in progress output: `stage 2 (from golang:1.22)`.
    pub(super) name: String,
    /// Names the stage in the build history independently of its number (see
    /// [`Planner::history_keys`]).
    pub(super) history_key: String,
}

/// Walks the graph once to find stage boundaries, then numbers stages depth-first.
struct Planner {
    /// Nodes that end a stage: the planned container, copy sources, fork points.
    boundaries: HashSet<usize>,
    /// Stage number given to each boundary node.
    ids: HashMap<usize, usize>,
    stages: Vec<PlanStage>,
    layouts: Vec<StageLayout>,
    next_step: usize,
}

impl Planner {
    /// Give each stage a name for the build history, so the step reasons compare a stage
    /// with the same stage of the last build: the final image's stage is `final`; another
    /// is named by what it starts from (an image as written, scratch, or its base stage's
    /// history key) and, among stages with the same start, its place in plan order. Adding
    /// a stage moves no other stage's name, unless it has the same start and comes first.
    fn history_keys(&mut self) {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let last = self.stages.len().saturating_sub(1);
        if let Some(layout) = self.layouts.get_mut(last) {
            layout.history_key = "final".to_owned();
        }
        for i in 0..last {
            let start = match &self.stages[i].base {
                PlanBase::Image(r) => format!("image {r}"),
                PlanBase::Scratch => "scratch".to_owned(),
                PlanBase::Stage(b) => format!("{{{}}}", self.layouts[b - 1].history_key),
            };
            let n = seen.entry(start.clone()).or_default();
            *n += 1;
            self.layouts[i].history_key = format!("{start} #{n}");
        }
    }

    /// Every node reachable from `top`: record copy sources and count each node's children.
    fn scan(top: &Container) -> HashSet<usize> {
        let mut boundaries = HashSet::from([key(&top.node)]);
        let mut children: HashMap<usize, HashSet<usize>> = HashMap::new();
        let mut seen = HashSet::new();
        let mut tips = vec![top.node.clone()];
        while let Some(tip) = tips.pop() {
            let mut node = Some(tip);
            while let Some(n) = node {
                if !seen.insert(key(&n)) {
                    break;
                }
                if let Some(source) = copy_source(&n.op) {
                    boundaries.insert(key(&source.node));
                    tips.push(source.node.clone());
                }
                if let Some(parent) = &n.parent {
                    children.entry(key(parent)).or_default().insert(key(&n));
                }
                node = n.parent.clone();
            }
        }
        boundaries.extend(
            children
                .into_iter()
                .filter(|(_, c)| c.len() > 1)
                .map(|(k, _)| k),
        );
        boundaries
    }

    /// Plan the stage ending at `tip` (and, first, every stage it needs); its number.
    fn stage(&mut self, tip: &Arc<Node>) -> usize {
        if let Some(id) = self.ids.get(&key(tip)) {
            return *id;
        }
        // This stage's own nodes: back from the tip to the previous boundary (exclusive).
        let mut own = vec![tip.clone()];
        let mut base_node = None;
        let mut cursor = tip.parent.clone();
        while let Some(n) = cursor {
            if self.boundaries.contains(&key(&n)) {
                base_node = Some(n);
                break;
            }
            cursor = n.parent.clone();
            own.push(n);
        }
        own.reverse();
        let base = match &base_node {
            Some(b) => PlanBase::Stage(self.stage(b)),
            None => match &own[0].op {
                Op::From(r, _) => PlanBase::Image(r.clone()),
                _ => PlanBase::Scratch,
            },
        };
        // Copy sources in step order.
        let sources: Vec<Option<usize>> = own
            .iter()
            .map(|n| copy_source(&n.op).map(|s| self.stage(&s.node)))
            .collect();
        let steps: Vec<PlanStep> = own
            .iter()
            .zip(&sources)
            .map(|(n, copy_from)| {
                self.next_step += 1;
                PlanStep {
                    index: self.next_step,
                    description: n.op.describe(),
                    copy_from: *copy_from,
                }
            })
            .collect();
        let mut copies_from: Vec<usize> = sources.into_iter().flatten().collect();
        copies_from.sort_unstable();
        copies_from.dedup();
        let id = self.stages.len() + 1;
        self.layouts.push(StageLayout {
            tip: tip.clone(),
            base: base_node,
            own: own
                .iter()
                .cloned()
                .zip(steps.iter().map(|s| s.index))
                .collect(),
            name: format!("stage {id} (from {base})"),
            history_key: String::new(),
        });
        self.stages.push(PlanStage {
            id,
            base,
            steps,
            copies_from,
        });
        self.ids.insert(key(tip), id);
        id
    }
}

impl Container {
    /// The step graph: stages in dependency order, their bases, steps and copy edges.
    /// Nothing is evaluated; the same container always gives the same plan.
    ///
    /// ```
    /// use blumeops_core::{Container, CopyOptions, PlanBase};
    ///
    /// let builder = Container::from("golang:1.22").with_exec(["go", "build", "-o", "/app"]);
    /// let app = Container::scratch().with_file_from("/app", &builder, "/app", CopyOptions::default());
    /// let plan = app.plan();
    /// assert_eq!(plan.stages.len(), 2);
    /// assert_eq!(plan.stages[0].base, PlanBase::Image("golang:1.22".into()));
    /// assert_eq!(plan.stages[1].copies_from, [1]);
    /// ```
    pub fn plan(&self) -> Plan {
        self.layout().0
    }

    /// The plan, and how the solver walks each of its stages (in the same order).
    pub(super) fn layout(&self) -> (Plan, Vec<StageLayout>) {
        let mut planner = Planner {
            boundaries: Planner::scan(self),
            ids: HashMap::new(),
            stages: Vec::new(),
            layouts: Vec::new(),
            next_step: 0,
        };
        planner.stage(&self.node);
        planner.history_keys();
        (
            Plan {
                total_steps: planner.next_step,
                stages: planner.stages,
            },
            planner.layouts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::CopyOptions;
    use crate::secret::Secret;

    fn descriptions(stage: &PlanStage) -> Vec<&str> {
        stage.steps.iter().map(|s| s.description.as_str()).collect()
    }

    /// A fork (two stages on one base stage) and a copy: solid arrows from the base stage,
    /// a dotted/dashed copy arrow, the final stage marked, labels escaped.
    #[test]
    fn pictures_show_bases_copies_and_the_final_stage() {
        let base = Container::from("reg.example/base:\"1\"").with_exec(["make"]);
        let builder = base.with_exec(["make", "app"]);
        let app = base.with_file_from("/app", &builder, "/out/app", CopyOptions::default());
        let plan = app.plan();
        assert_eq!(plan.stages.len(), 3, "{plan}");
        let mermaid = plan.to_mermaid("app <1>");
        assert_eq!(
            mermaid,
            "---\ntitle: app #lt;1#gt;\n---\nflowchart TD\n\
             \x20 s1[\"stage 1<br/>from reg.example/base:#quot;1#quot;<br/>2 steps\"]\n\
             \x20 s2[\"stage 2<br/>from stage 1<br/>1 step\"]\n\
             \x20 s3[\"stage 3<br/>from stage 1<br/>1 step<br/>final image\"]\n\
             \x20 s1 --> s2\n\
             \x20 s1 --> s3\n\
             \x20 s2 -. copy .-> s3\n\
             \x20 classDef final stroke-width:3px\n\
             \x20 class s3 final\n"
        );
        let dot = plan.to_dot("app");
        assert!(
            dot.contains("s1 [label=\"stage 1\\nfrom reg.example/base:\\\"1\\\"\\n2 steps\"];"),
            "{dot}"
        );
        assert!(
            dot.contains(
                "s3 [label=\"stage 3\\nfrom stage 1\\n1 step\\nfinal image\", peripheries=2];"
            ),
            "{dot}"
        );
        assert!(
            dot.contains("  s1 -> s2;\n  s1 -> s3;\n  s2 -> s3 [style=dashed, label=\"copy\"];\n"),
            "{dot}"
        );
    }

    #[test]
    fn single_stage() {
        let c = Container::from("busybox")
            .with_env_variable("A", "1")
            .with_default_args(["sh"]);
        let plan = c.plan();
        assert_eq!(plan.total_steps, 3);
        assert_eq!(plan.stages.len(), 1);
        let stage = &plan.stages[0];
        assert_eq!(stage.id, 1);
        assert_eq!(stage.base, PlanBase::Image("busybox".into()));
        assert_eq!(descriptions(stage), c.steps());
        assert!(stage.copies_from.is_empty());
    }

    #[test]
    fn multi_stage_edges_in_dependency_order() {
        let base = Container::from("debian:12").with_exec(["apt-get", "update"]);
        let builder = base.with_exec(["make"]);
        let assets = Container::scratch().with_new_file("/a.txt", "a", 0o644);
        let app = base
            .with_file_from("/usr/bin/app", &builder, "/out/app", CopyOptions::default())
            .with_path_from("/srv/", &assets, "/a.txt", CopyOptions::default())
            .with_directory_from("/lib2", &builder, "/lib", CopyOptions::default());
        let plan = app.plan();

        // `base` is a fork point: shared by `builder` and `app`, listed once.
        let bases: Vec<_> = plan.stages.iter().map(|s| s.base.clone()).collect();
        assert_eq!(
            bases,
            [
                PlanBase::Image("debian:12".into()),
                PlanBase::Stage(1),
                PlanBase::Scratch,
                PlanBase::Stage(1),
            ]
        );
        assert_eq!(
            descriptions(&plan.stages[0]),
            ["from debian:12", "with_exec apt-get update"]
        );
        assert_eq!(descriptions(&plan.stages[1]), ["with_exec make"]);
        assert_eq!(
            descriptions(&plan.stages[2]),
            [
                "from scratch",
                "with_new_file /a.txt (1 bytes, mode 0644, owner 0:0)"
            ]
        );
        let last = &plan.stages[3];
        assert_eq!(last.copies_from, [2, 3]);
        let copies: Vec<_> = last.steps.iter().map(|s| s.copy_from).collect();
        assert_eq!(copies, [Some(2), Some(3), Some(2)]);
        // Step numbers run across stages, each once.
        let indexes: Vec<usize> = plan
            .stages
            .iter()
            .flat_map(|s| s.steps.iter().map(|s| s.index))
            .collect();
        assert_eq!(indexes, (1..=8).collect::<Vec<_>>());
        assert_eq!(plan.total_steps, 8);
        // Deterministic.
        assert_eq!(app.plan(), plan);
        let text = plan.to_string();
        assert!(text.starts_with("stage 1 (from debian:12)\n  [1] from debian:12\n"));
        assert!(text.contains("stage 4 (from stage 1; copies from stage 2, 3; final)\n"));
    }

    #[test]
    fn secrets_stay_out_of_the_plan() {
        let c = Container::from("busybox")
            .with_secret_variable("TOKEN", Secret::new("hunter2-value"))
            .with_exec(["sh", "-c", "true"]);
        let plan = c.plan();
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("hunter2-value"));
        assert!(!plan.to_string().contains("hunter2-value"));
        assert!(json.contains("with_secret_variable TOKEN"));
    }

    #[test]
    fn json_shape() {
        let builder = Container::from("golang:1.22").with_exec(["go", "build"]);
        let app =
            Container::scratch().with_file_from("/app", &builder, "/app", CopyOptions::default());
        let json = serde_json::to_value(app.plan()).unwrap();
        assert_eq!(
            json["stages"][0]["base"],
            serde_json::json!({"image": "golang:1.22"})
        );
        assert_eq!(json["stages"][1]["base"], serde_json::json!("scratch"));
        assert_eq!(json["stages"][1]["steps"][1]["copy_from"], 1);
        assert!(json["stages"][0]["steps"][0].get("copy_from").is_none());
        assert_eq!(json["total_steps"], 4);
    }
}
