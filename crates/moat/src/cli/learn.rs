//! `--learn`: the policy a run needed, written after the sandbox is gone through the
//! directory opened before it started (an existing file kept and added to, `--learn-fresh`
//! starting over).

use anyhow::Context;
use moat_policy::NetworkPolicy;

/// `--learn FILE`: the file's directory, opened before the sandbox starts, and — unless
/// `--learn-fresh` — what FILE held then, which the run's rules extend.
pub(super) struct Learn {
    pub(super) file: moat_sandbox::HostFile,
    /// The text FILE held and the policy it reads as.
    pub(super) existing: Option<(String, NetworkPolicy)>,
    /// Whether FILE existed at the start (also under `--learn-fresh`).
    pub(super) existed: bool,
}

/// The largest policy file `--learn` extends (a learned policy is a few KiB).
pub(super) const MAX_LEARNED_FILE: u64 = 4 << 20;

impl Learn {
    /// Opens FILE's directory and, unless `fresh`, reads what FILE holds — now, before
    /// anything inside the sandbox could have changed it.
    pub(super) fn open(path: &std::path::Path, fresh: bool) -> anyhow::Result<Learn> {
        let file = moat_sandbox::HostFile::open(path)
            .map(moat_sandbox::HostFile::durable)
            .with_context(|| format!("--learn {}: cannot write there", path.display()))?;
        let existed = file.real_path().is_ok_and(|p| p.symlink_metadata().is_ok());
        let existing = if fresh {
            None
        } else {
            match file
                .read_existing(MAX_LEARNED_FILE)
                .with_context(|| format!("--learn {}: cannot read it", path.display()))?
            {
                None => None,
                Some(bytes) => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        anyhow::anyhow!(
                            "--learn {}: not a policy moat can extend (not UTF-8 text); --learn-fresh {} replaces it",
                            path.display(),
                            path.display()
                        )
                    })?;
                    let format = moat_policy::PolicyFormat::detect(path, &text);
                    let policy = NetworkPolicy::from_text(path, &text, format).map_err(|e| {
                        anyhow::anyhow!(
                            "--learn {}: not a policy moat can extend ({e}); --learn-fresh {} replaces it",
                            path.display(),
                            path.display()
                        )
                    })?;
                    if format != moat_policy::PolicyFormat::Toml {
                        anyhow::bail!(
                            "--learn {}: moat extends TOML policies only; --learn-fresh {} replaces it",
                            path.display(),
                            path.display()
                        );
                    }
                    Some((text, policy))
                }
            }
        };
        Ok(Learn {
            file,
            existing,
            existed,
        })
    }

    /// Writes what the run learned (`learned`: a whole policy file): as it is, or the rules
    /// the existing file lacks appended to it, with a line saying which run added them.
    pub(super) fn write(&self, learned: &str, run: &str, command: &str) -> anyhow::Result<()> {
        let path = self.file.path();
        let (text, added, kept) = match &self.existing {
            None => (learned.to_owned(), learned.matches("[[rules]]").count(), 0),
            Some((old, policy)) => {
                let mut text = old.clone();
                let (mut added, mut kept) = (0, 0);
                for block in rule_blocks(learned) {
                    let rule = NetworkPolicy::from_text(
                        &path,
                        &format!("default_action = \"deny\"\n{block}"),
                        moat_policy::PolicyFormat::Toml,
                    )
                    .ok()
                    .and_then(|p| p.rules.into_iter().next());
                    if rule.is_some_and(|r| policy.rules.contains(&r)) {
                        kept += 1;
                        continue;
                    }
                    if added == 0 {
                        if !text.ends_with('\n') {
                            text.push('\n');
                        }
                        text.push_str(&format!(
                            "\n# Added by `moat run --learn` from run {run} of: {}\n",
                            command
                        ));
                    }
                    text.push('\n');
                    text.push_str(block);
                    added += 1;
                }
                (text, added, kept)
            }
        };
        self.file
            .replace(text.as_bytes(), 0o644)
            .with_context(|| format!("--learn {}: cannot write the policy", path.display()))?;
        let rules = |n: usize| format!("{n} rule{}", if n == 1 { "" } else { "s" });
        if self.existing.is_some() {
            eprintln!(
                "moat: --learn {}: added {} from this run ({} already there){}",
                path.display(),
                rules(added),
                kept,
                if added == 0 {
                    "; the file is unchanged"
                } else {
                    ""
                }
            );
        } else {
            eprintln!(
                "moat: learned {} from this run: wrote {} (run it again with --policy {})",
                rules(added),
                path.display(),
                path.display()
            );
        }
        Ok(())
    }
}

/// The `[[rules]]` blocks of a learned policy's text, each with its comments, as written.
pub(super) fn rule_blocks(text: &str) -> Vec<&str> {
    let starts: Vec<usize> = text
        .match_indices("\n[[rules]]")
        .map(|(i, _)| i + 1)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts.get(k + 1).map_or(text.len(), |&next| next - 1);
            &text[start..end]
        })
        .collect()
}
