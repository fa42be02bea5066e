# Thin aliases for people who type `make`; ./dev.sh does the work (and runs where make is not installed).
.PHONY: setup demo test bench
setup:
	./dev.sh setup
demo:
	./dev.sh demo
test:
	./dev.sh test
bench:
	./dev.sh bench
