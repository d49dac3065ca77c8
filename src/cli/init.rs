//! `strata init`

use std::path::Path;

use strata::store::Repository;

use super::CmdResult;

pub fn run(repo: &Path) -> CmdResult {
    Repository::init(repo)?;
    println!("initialized strata repository in {}", repo.display());
    Ok(())
}
