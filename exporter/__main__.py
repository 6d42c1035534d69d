from efexport.exporter.cli import main

main()
