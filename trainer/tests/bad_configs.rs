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
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let want = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{} lacks its `# expect:` line", path.display()));
        let got = TrainConfig::from_toml_str(&text, "x.toml").err().unwrap_or_else(|| panic!("{} was accepted", path.display()));
        assert_eq!(got.to_string(), want, "{}", path.display());
        n += 1;
    }
    assert!(n >= 14, "the corpus has {n} files");
}
