"""Language models: the corpora (PTB, WikiText-2) and the training / evaluation recipe of rnn/train.py."""
