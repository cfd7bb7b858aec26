from retriever_forge.orchestration.cli import main


def test_search_names_the_missing_artifact_and_the_command(tmp_path, capsys):
    assert main(["search", "--dataset", "x", "--home", str(tmp_path), "anything"]) == 2
    err = capsys.readouterr().err
    assert "no corpus_index for dataset 'x'" in err and "run `retriever-forge run --dataset x` first" in err
    assert main(["search", "--dataset", "x", "--home", str(tmp_path), "--system", "bm25", "anything"]) == 2
    assert "no corpus for dataset 'x'" in capsys.readouterr().err
