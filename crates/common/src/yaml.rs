//! YAML with positions: the line and column of every node by path, and the
//! file:line:col diagnostics that pipeline files and training specs report.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A problem found in a YAML file (a pipeline or a training spec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// The YAML path concerned, e.g. `transforms[1].sql`.
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    /// The same problem, rendered as a warning.
    pub fn as_warning(&self) -> String {
        self.to_string().replacen(": error: ", ": warning: ", 1)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if !self.path.is_empty() {
            write!(f, " (at `{}`)", self.path)?;
        }
        Ok(())
    }
}

/// Line and column (1-based) of every node of a YAML document, by path. Keys are recorded
/// twice: `a.b` is the value's position, `a.b#key` the key's.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// Builds the position map of `text` (empty when the YAML does not parse).
    pub fn of(text: &str) -> Positions {
        let mut rx = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut rx, false);
        Positions { map: rx.map }
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.map.get(&p) {
                return *pos;
            }
            match p.rfind(['.', '[', '#']) {
                Some(i) => p.truncate(i),
                None => return self.map.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    /// True when `path` was written in the file.
    pub fn has(&self, path: &str) -> bool {
        self.map.contains_key(path)
    }

    /// The position of the key `key` inside the map at `path`.
    pub fn locate_key(&self, path: &str, key: &str) -> (usize, usize) {
        let full = join(path, key);
        self.map
            .get(&format!("{full}#key"))
            .copied()
            .unwrap_or_else(|| self.locate(&full))
    }
}

/// `path.key` (or `key` at the root).
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    map: HashMap<String, (usize, usize)>,
}

impl Recorder {
    /// The path of the value about to be read, or None when a map key is expected.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map { path, key: Some(k) }) => Some(join(path, k)),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(text, ..) => match self.value_path() {
                Some(path) => {
                    self.map.entry(path).or_insert(pos);
                    self.value_done();
                }
                None => {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        self.map
                            .entry(format!("{}#key", join(path, &text)))
                            .or_insert(pos);
                        // a block map's start mark is the colon after its first key:
                        // the map is where that key is
                        if let Some(start) = self.map.get_mut(path.as_str())
                            && pos < *start
                        {
                            *start = pos;
                        }
                        *key = Some(text);
                    }
                }
            },
            Event::Alias(_) => self.value_done(),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.map.entry(path.clone()).or_insert(pos);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}
