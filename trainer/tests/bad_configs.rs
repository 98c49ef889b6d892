//! Bad training configs are refused before anything is built, each with a message that names
//! the key. Every file in tests/configs/bad/ starts with `# expect: <the exact message>` and
//! is otherwise a config whose other keys take their defaults (which are valid).

use ablate_trainer::TrainConfig;

#[test]
fn the_defaults_are_a_valid_config() {
    TrainConfig::default().validate().unwrap();
}

#[test]
fn bad_configs_get_the_exact_message() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/bad");
    let (mut n, mut wrong) = (0, Vec::new());
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let want = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{} lacks its `# expect:` line", path.display()));
        match TrainConfig::from_toml_str(&text, "x.toml") {
            Ok(_) => wrong.push(format!("{}: accepted", path.display())),
            Err(got) if got.to_string() != want => wrong.push(format!("{}:\n  got:  {got}\n  want: {want}", path.display())),
            Err(_) => {}
        }
        n += 1;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(n >= 25, "the corpus has {n} files");
}
