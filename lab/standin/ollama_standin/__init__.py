"""The engine of the air-gap lab's Ollama stand-in: the model store, the scheduler
and the real llama.cpp engine behind the stand-in's Go front (lab/standin/front).
Test equipment, never production."""
