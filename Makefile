# Convenience targets for the C side. The Rust side builds with cargo alone.
#
#   make tour    build the static library (release), compile examples/tour.c against it, run it
#   make test    run every test: Rust unit and property tests, the C program test, the header test

CC ?= cc
CFLAGS ?= -O2 -std=c11 -Wall -Wextra
# System libraries libnormkit.a needs on Linux (glibc), from
#   cargo rustc --release --lib --crate-type staticlib -- --print native-static-libs
NATIVE_LIBS = -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc

.PHONY: tour test lib
lib:
	cargo build --release --lib

tour: lib
	$(CC) $(CFLAGS) -Iinclude examples/tour.c target/release/libnormkit.a $(NATIVE_LIBS) -o target/release/tour
	target/release/tour

test:
	cargo test --release
