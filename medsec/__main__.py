from medsec.cli import main

main()
