module github.com/libblackmamba/libblackmamba/bindings/go

go 1.19
