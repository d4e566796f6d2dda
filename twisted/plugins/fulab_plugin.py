from twisted.application.service import ServiceMaker

fulab = ServiceMaker("fulabd", "fulabd.tap", "Receive, store and stream AI agent session transcripts", "fulab")
