module dativo.dev/fixedwidth

go 1.19
