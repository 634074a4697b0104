"""Crafted model answers the scorer tests draw from: the shapes that trip answer parsing.

Articles, punctuation, numbers as words and digits, case ("Yes." vs "yes"), letters in
parentheses or after a phrase, empty and whitespace-only answers, several lines, reasoning
blocks lmms-eval's command line cuts out, and non-ASCII text.
"""

ANSWERS = [
  "", " ", "\n", "\t yes \n",
  "Yes", "yes", "Yes.", "YES", "yes!", "Yes, there is a dog.", "y", "Y.",
  "No", "no", "No.", "NO", "No, there is not.", "no\n", "Not at all", "There is no dog.", "n", "nope",
  "A", "a", "(A)", "A.", "A. a cat", "B", "(B)", "b.", "B)", ":C", "C:", "Answer: C", "The answer is B",
  "the answer is (D).", "I choose D", "D", "E", "A B", "A dog is on the left, so B.", "Option C", "答案是B",
  "two", "2", "Two", "2 dogs", "two dogs", "ten", "10", "none", "zero", "0", "1,000", "1000", "3.5", "3.50", "3.5.",
  "the cat", "a cat", "An apple!", "cat", "Cat.", "cats", "red and white", "red, white",
  "don't", "dont", "it's", "its", "coca-cola", "coca cola", "st. louis", "U.S.A.", "e-mail",
  "first line\nsecond line", "yes\nno", "  padded answer  ",
  "<think>it is A</think> B", "<think>no</think>yes", "</think>C", "<analysis>maybe</analysis>No.",
  "<think>unclosed A", "Café", "İstanbul", "ΟΔΟΣ", "日本", "…", "x" * 200 + " yes",
]
